//! `public.staging_followers`: the load of a run (`load_id`) before the merge;
//! the COPY that fills it, the duplicate report and resolution, the merge's
//! lock and count of it, and its cleanup. `pipeline/staging.rs` and
//! `pipeline/merge.rs` bind and run them; `runs::recover` empties it.

/// One batch of a load, in COPY's binary format (`pipeline/staging.rs`, `encode`).
pub(crate) const COPY: &str =
    "COPY public.staging_followers (email, full_name, load_id, line_no) FROM STDIN (FORMAT binary)";

/// Keeps one row per email of the load: the one with the highest `line_no`. One
/// sort of the load (a window over each email's copies), so 100k copies of one
/// address cost what 100k different addresses cost (a self-join was quadratic in
/// them; see bench/duplicates.sh). `ctid` breaks ties, so exactly one row per email
/// survives whatever the line numbers are: the merge's check that staging holds
/// one row per distinct email cannot fail on equal line numbers.
pub(crate) const DROP_EARLIER_COPIES: &str = "DELETE FROM public.staging_followers s
  USING (SELECT ctid AS tid,
                row_number() OVER (PARTITION BY email ORDER BY line_no DESC, ctid DESC) AS rank
           FROM public.staging_followers WHERE load_id = $1 {only}) copies
  WHERE copies.rank > 1 AND s.ctid = copies.tid";

/// `sql` (one of the statements with `{only}`) restricted to the emails of
/// parameter `$n` (`Some(n)`: the candidates the reader found), or over the
/// whole load (`None`).
pub(crate) fn only(sql: &str, n: Option<usize>) -> String {
    match n {
        None => sql.replace("{only}", ""),
        Some(n) => sql.replace("{only}", &format!("AND email = ANY(${n}::text[])")),
    }
}

/// How many extra rows the load `$1` holds (`extra`: rows beyond one per email).
pub(crate) const EXTRA: &str = "SELECT (count(*) - count(DISTINCT email))::bigint AS extra FROM public.staging_followers WHERE load_id = $1 {only}";

/// Up to `$2` emails of the load `$1` that occur more than once, each with
/// the lines it is on (`email`, `lines`), first occurrence first.
pub(crate) const DUPLICATES: &str = "SELECT email, array_agg(line_no ORDER BY line_no) AS lines
                   FROM public.staging_followers WHERE load_id = $1 {only}
                  GROUP BY email HAVING count(*) > 1 ORDER BY min(line_no) LIMIT $2";

/// Removes rows of the load `$1` whose email appears again later in the file
/// on a rejected row (`$2` the emails, `$3` their lines).
pub(crate) const DROP_SUPERSEDED: &str = "DELETE FROM public.staging_followers s
              USING unnest($2::text[], $3::bigint[]) AS r(email, line_no)
              WHERE s.load_id = $1 AND s.email = r.email AND r.line_no > s.line_no";

/// The purge's lock: nobody stages meanwhile, waited for at most 5 s.
pub(crate) const PURGE_LOCK: &str = "SET LOCAL lock_timeout = '5s';
         LOCK TABLE public.staging_followers IN ACCESS EXCLUSIVE MODE";

/// Whether the role may `TRUNCATE` and staging holds no other load than `$1`,
/// and how many rows of `$1` it holds.
pub(crate) const PURGE_ALONE: &str =
    "SELECT has_table_privilege('public.staging_followers', 'TRUNCATE')
                AND NOT EXISTS (SELECT 1 FROM public.staging_followers WHERE load_id <> $1),
                (SELECT count(*) FROM public.staging_followers WHERE load_id = $1)";

/// Whether the role may `TRUNCATE` staging (1 row, or none).
pub(crate) const MAY_TRUNCATE: &str =
    "SELECT count(*) WHERE has_table_privilege('public.staging_followers', 'TRUNCATE')";

pub(crate) const TRUNCATE: &str = "TRUNCATE public.staging_followers";

/// The merge's lock on staging (`verify`), with its setting for the
/// transaction: nobody changes staging until the commit.
pub(crate) const LOCK: &str =
    "LOCK TABLE public.staging_followers IN ACCESS EXCLUSIVE MODE; SET LOCAL jit = off";

/// How many rows the load `$1` holds.
pub(crate) const STAGED: &str = "SELECT count(*) FROM public.staging_followers WHERE load_id = $1";

/// Removes the rows of the load `$1` (the compensation of staging).
pub(crate) const DISCARD: &str = "DELETE FROM public.staging_followers WHERE load_id = $1";

/// Removes every staged row: those of crashed runs, under the run lock (`runs::recover`).
pub(crate) const RECOVER: &str = "DELETE FROM public.staging_followers";
