#!/usr/bin/env bash
# scripts/check-links.sh: every relative link and #anchor in the tracked *.md files
# resolves (anchors by GitHub's heading slugs), and so does every `docs/….md#anchor` or
# `README.md#anchor` reference in the tracked sources (comments, scripts, configuration).
# A bare "README" in a source file (prose such as `README, "Commands"`) is an error too:
# references name a file and a heading. Needs bash and python3 (standard library only).
# Used by .ci/run; see docs/development.md#ci.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import os, re, subprocess, sys, unicodedata

def tracked(*patterns):
    out = subprocess.run(["git", "ls-files", "-z", "--", *patterns],
                         check=True, capture_output=True).stdout.decode()
    return [p for p in out.split("\0") if p and os.path.exists(p)]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")

def prose_lines(text):
    """(line number, line) outside fenced code blocks."""
    fence = None
    for n, line in enumerate(text.split("\n"), 1):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        if m:
            fence = m.group(1)
            continue
        yield n, line

def strip_inline_code(line):
    return re.sub(r"(`+)(?:(?!\1).)+?\1", lambda m: " " * len(m.group(0)), line)

def slug(heading):
    """GitHub's anchor for a heading: its rendered text, lower-cased, without
    punctuation other than '-' and '_', spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = re.sub(r"<[^>]+>", "", text)                           # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"(?<![\w])_+|_+(?![\w])", "", text)           # _emphasis_
    text = text.strip().lower()
    keep = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in " -" or cat[0] in "LMN" or cat == "Pc":
            keep.append(ch)
    return "".join(keep).replace(" ", "-")

anchor_cache = {}

def anchors(path):
    if path not in anchor_cache:
        seen, found = {}, set()
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for _, line in prose_lines(text):
            m = re.match(r"^ {0,3}#{1,6}[ \t]+(.*?)[ \t#]*$", line)
            if m:
                base = slug(m.group(1))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
            for m in re.finditer(r"<a\s+(?:name|id)=\"([^\"]+)\"", line):
                found.add(m.group(1))
        anchor_cache[path] = found
    return anchor_cache[path]

errors = []

def check_target(source, lineno, target, base_dir):
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
        return  # external: http:, https:, mailto:, …
    path, _, anchor = target.partition("#")
    path = path.split("?")[0]
    resolved = os.path.normpath(os.path.join(base_dir, path)) if path else source
    if not os.path.exists(resolved):
        errors.append(f"{source}:{lineno}: {target}: no file {resolved}")
        return
    if anchor:
        if not resolved.endswith(".md") or os.path.isdir(resolved):
            errors.append(f"{source}:{lineno}: {target}: an anchor into a file that is not Markdown")
        elif anchor not in anchors(resolved):
            errors.append(f"{source}:{lineno}: {target}: no heading #{anchor} in {resolved}")

INLINE = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFDEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")

md_files = tracked("*.md")
for md in md_files:
    with open(md, encoding="utf-8") as f:
        text = f.read()
    base = os.path.dirname(md)
    for n, line in prose_lines(text):
        line = strip_inline_code(line)
        for m in INLINE.finditer(line):
            check_target(md, n, m.group(1), base)
        m = REFDEF.match(line)
        if m:
            check_target(md, n, m.group(1), base)

SOURCE_DIRS = ["src", "tests", "migration", "entity", "cron", "bench", "scripts", ".ci"]
SOURCE_FILES = ["Dockerfile", "docker-compose.yml", ".env.example", "Cargo.toml", "deny.toml"]
REF = re.compile(r"(?<![\w./-])((?:\.\./)*(?:docs/[\w./-]+?\.md|README\.md|bench/RESULTS\.md))(#[\w-]+)?")
BARE = re.compile(r"\bREADME\b(?!\.md)")
# This script itself names the patterns it looks for.
sources = [p for p in tracked(*SOURCE_DIRS, *SOURCE_FILES)
           if not p.endswith(".md") and p != "scripts/check-links.sh"]
for src in sources:
    try:
        with open(src, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        continue
    for n, line in enumerate(text.split("\n"), 1):
        for m in REF.finditer(line):
            path = re.sub(r"^(\.\./)+", "", m.group(1))
            check_target(src, n, path + (m.group(2) or ""), ".")
        if BARE.search(line):
            errors.append(f"{src}:{n}: a bare \"README\": link a heading instead "
                          "(e.g. docs/sync.md#delete-guard or README.md#commands)")

for e in errors:
    print(e, file=sys.stderr)
if errors:
    print(f"check-links: {len(errors)} broken reference(s)", file=sys.stderr)
    sys.exit(1)
print(f"check-links: {len(md_files)} Markdown files and {len(sources)} sources, every link resolves")
PY
