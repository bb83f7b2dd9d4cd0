#!/usr/bin/env python3
"""Write the SHA-256 of compiled bmodels into ``bmodels/manifest.yaml``, line by line.

``compile.sh`` calls this at its end; an operator can run it by hand after copying other
builds into place:

    python3 bmodels/fill_checksums.py [--manifest bmodels/manifest.yaml] [--dry-run] OUT_DIR_OR_FILES...

For every ``source:`` block of the manifest whose ``file:`` names one of the given bmodels
(compared by file name, since the manifest's files resolve relative to its own folder), the
``sha256:`` line of that block is rewritten, or inserted right under ``file:`` with the same
indentation. Nothing else changes: comments, key order, blank lines, quoting and line endings
stay exactly as written, which a YAML round trip would not keep. A block whose file is not
among the given bmodels keeps its checksum (or its absence) untouched.

Standard library only: it runs in tpu-mlir's docker image (Python 3.10) right after the
build, and on the box (Python 3.8), neither of which needs PyYAML for this.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

#: ``key: rest`` on one line of block-style YAML; keys of our manifests are plain words.
_KEY_LINE = re.compile(r"^(?P<indent>[ ]*)(?P<key>[A-Za-z0-9_.-]+):(?P<rest>(?:[ \t].*)?)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestEditError(ValueError):
    """The manifest has a shape this line editor will not touch (it says which line)."""


@dataclass(frozen=True)
class Change:
    """One ``source:`` block whose file was among the given bmodels."""

    path: str  # key path of the block, e.g. "models.detector.source"
    file: str  # the file name the manifest gives
    line: int  # 1-based line of the sha256 entry after the edit
    old: Optional[str]  # the checksum before, None where there was no sha256 line
    new: str

    @property
    def action(self) -> str:
        if self.old is None:
            return "inserted"
        return "unchanged" if self.old == self.new else "updated"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _split_comment(rest: str) -> Tuple[str, str]:
    """``rest`` of a key line -> (value without quotes, the trailing comment with its spacing).

    A ``#`` starts a comment only after whitespace and outside quotes (the YAML rule)."""
    quote = ""
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            j = i
            while j > 0 and rest[j - 1] in " \t":
                j -= 1
            return _unquote(rest[:j].strip()), rest[j:]
    return _unquote(rest.strip()), ""


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _line_body(line: str) -> Tuple[str, str]:
    """A line without and with only its line ending."""
    body = line.rstrip("\r\n")
    return body, line[len(body):]


def _is_blank_or_comment(body: str) -> bool:
    stripped = body.strip()
    return not stripped or stripped.startswith("#")


def fill_checksums(text: str, checksums: Mapping[str, str]) -> Tuple[str, List[Change]]:
    """The manifest ``text`` with the checksums of ``checksums`` (file name -> sha256) set.

    Returns the new text and one ``Change`` per ``source:`` block whose ``file:`` names a
    key of ``checksums``.
    """
    for name, digest in checksums.items():
        if not _SHA256.match(digest):
            raise ValueError(f"{name}: not a lowercase hex sha256: {digest!r}")
    lines = text.splitlines(keepends=True)
    changes: List[Change] = []
    parents: List[Tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    i = 0
    while i < len(lines):
        body, _ = _line_body(lines[i])
        match = _KEY_LINE.match(body)
        if match is None or _is_blank_or_comment(body):
            i += 1
            continue
        indent = len(match.group("indent"))
        while parents and parents[-1][0] >= indent:
            parents.pop()
        key = match.group("key")
        parents.append((indent, key))
        if key != "source":
            i += 1
            continue
        value, _ = _split_comment(match.group("rest"))
        if value:
            raise ManifestEditError(
                f"line {i + 1}: `source:` written inline ({value!r}); write it as a block "
                f"(file: and sha256: on their own lines) so that it can be edited")
        path = ".".join(k for _, k in parents)
        i = _fill_block(lines, i, indent, path, checksums, changes)
    return "".join(lines), changes


def _fill_block(lines: List[str], start: int, indent: int, path: str,
                checksums: Mapping[str, str], changes: List[Change]) -> int:
    """Edit the block under the ``source:`` line ``start``; returns the line after it."""
    child_indent: Optional[int] = None
    file_line = sha_line = None
    file_name = ""
    end = start + 1
    while end < len(lines):
        body, _ = _line_body(lines[end])
        if _is_blank_or_comment(body):
            end += 1
            continue
        line_indent = len(body) - len(body.lstrip(" "))
        if line_indent <= indent:
            break
        match = _KEY_LINE.match(body)
        if child_indent is None:
            child_indent = line_indent
        if match is not None and line_indent == child_indent:
            if match.group("key") == "file":
                file_line, (file_name, _) = end, _split_comment(match.group("rest"))
            elif match.group("key") == "sha256":
                sha_line = end
        end += 1
    if file_line is None or child_indent is None:
        return end
    digest = checksums.get(os.path.basename(file_name))
    if digest is None:
        return end
    if sha_line is not None:
        body, newline = _line_body(lines[sha_line])
        match = _KEY_LINE.match(body)
        assert match is not None  # it matched while scanning the block
        old, comment = _split_comment(match.group("rest"))
        lines[sha_line] = f"{match.group('indent')}sha256: {digest}{comment}{newline}"
        changes.append(Change(path, file_name, sha_line + 1, old or None, digest))
        return end
    body, newline = _line_body(lines[file_line])
    if not newline:  # the file line was the last line of a file without a final newline
        newline = "\n"
        lines[file_line] = body + newline
    lines.insert(file_line + 1, f"{' ' * child_indent}sha256: {digest}{newline}")
    changes.append(Change(path, file_name, file_line + 2, None, digest))
    return end + 1


def bmodel_files(paths: Iterable[Path]) -> List[Path]:
    """The bmodels named: files as given, folders by their ``*.bmodel`` files (not recursive)."""
    found: List[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix == ".bmodel" and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def checksums_of(files: Sequence[Path]) -> Dict[str, str]:
    checksums: Dict[str, str] = {}
    for path in files:
        if path.name in checksums:
            raise ValueError(f"two bmodels named {path.name}: the manifest names files, not paths")
        checksums[path.name] = sha256_of(path)
    return checksums


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename, keeping its permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        shutil.copymode(str(path), tmp)
        os.replace(tmp, str(path))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the sha256 of compiled bmodels under their manifest entries.")
    parser.add_argument("bmodels", nargs="+", type=Path,
                        help="bmodel files, or folders whose *.bmodel files to use")
    parser.add_argument("--manifest", type=Path,
                        default=Path(__file__).resolve().parent / "manifest.yaml",
                        help="the manifest to edit (default: the manifest.yaml beside this script)")
    parser.add_argument("--dry-run", action="store_true", help="report, do not write")
    args = parser.parse_args(argv)

    try:
        files = bmodel_files(args.bmodels)
        checksums = checksums_of(files)
        with open(args.manifest, "r", encoding="utf-8", newline="") as fh:
            text = fh.read()
        new_text, changes = fill_checksums(text, checksums)
    except (OSError, ValueError) as exc:
        print(f"fill_checksums: {exc}", file=sys.stderr)
        return 1
    if not files:
        print(f"fill_checksums: no bmodel given; {args.manifest} left as it is")
        return 0
    for change in changes:
        print(f"{args.manifest}:{change.line}: {change.path} {change.file}: "
              f"sha256 {change.new} ({change.action})")
    named = {os.path.basename(c.file) for c in changes}
    for name in sorted(set(checksums) - named):
        print(f"{name}: sha256 {checksums[name]} (not named by {args.manifest.name}; not written)")
    if new_text != text and not args.dry_run:
        write_atomically(args.manifest, new_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
