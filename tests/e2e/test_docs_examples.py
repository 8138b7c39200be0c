"""test_docs_examples.py: every YAML example in docs/*.md and examples/ passes `polis check`, except
blocks marked as deliberately wrong (which must fail, with the errors the docs show) or as
fragments of a configuration (skipped). A marker is an HTML comment on the line before the fence:
<!-- check: invalid --> or <!-- check: fragment -->."""

import glob
import os
import re
import subprocess

import pytest

from harness import REPO

MARKER = re.compile(r"^<!--\s*check:\s*(\S+)\s*-->$")
KINDS = ("valid", "invalid", "fragment")
LABEL = re.compile(r"^#\s*(\S+\.ya?ml)\s*$")  # "# bad.yaml": names the file, is not part of it


class Block:
    def __init__(self, doc, line, kind, text, after):
        self.doc = doc  # path relative to the repository
        self.line = line  # line of the opening fence, from 1
        self.kind = kind
        self.text = text
        self.after = after  # the text of the next fenced block when it is a console transcript

    @property
    def id(self):
        return f"{self.doc}:{self.line}"


def doc_blocks():
    """Every ```yaml block of docs/*.md, in order."""
    out = []
    for path in sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))):
        rel = os.path.relpath(path, REPO)
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        i = 0
        while i < len(lines):
            if lines[i].strip() != "```yaml":
                i += 1
                continue
            start = i
            m = MARKER.match(lines[i - 1].strip()) if i > 0 else None
            kind = m.group(1) if m else "valid"
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            i += 1
            after = None
            j = i
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and lines[j].strip() == "```console":
                k = j + 1
                transcript = []
                while k < len(lines) and lines[k].strip() != "```":
                    transcript.append(lines[k])
                    k += 1
                after = "\n".join(transcript)
            out.append(Block(rel, start + 1, kind, "\n".join(body) + "\n", after))
    return out


def example_files():
    return sorted(os.path.relpath(p, REPO)
                  for pat in ("*.yaml", "*.yml")
                  for p in glob.glob(os.path.join(REPO, "examples", "**", pat), recursive=True))


BLOCKS = doc_blocks()


def check(binary, cwd, name):
    return subprocess.run([binary, "check", "-c", name], cwd=str(cwd), capture_output=True,
                          text=True, timeout=30)


def write_block(block, tmp_path):
    """The block as a file, named as its label says (the label line left out, as the docs'
    line numbers do) or polis.yaml."""
    lines = block.text.split("\n")
    m = LABEL.match(lines[0]) if lines else None
    name = "polis.yaml"
    if m:
        name = os.path.basename(m.group(1))
        lines = lines[1:]
    (tmp_path / name).write_text("\n".join(lines))
    return name


def test_doc_blocks_found_and_markers_known():
    assert BLOCKS, "no ```yaml block found in docs/*.md"
    for b in BLOCKS:
        assert b.kind in KINDS, f"{b.id}: unknown marker 'check: {b.kind}'; expected {KINDS}"
    kinds = {b.kind for b in BLOCKS}
    assert {"valid", "invalid"} <= kinds, kinds
    assert example_files(), "no YAML file under examples/"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind in ("valid", "invalid")],
                         ids=lambda b: b.id)
def test_doc_yaml_block(block, polis_bin, tmp_path):
    name = write_block(block, tmp_path)
    r = check(polis_bin, tmp_path, name)
    if block.kind == "valid":
        assert r.returncode == 0, f"{block.id} fails `polis check`:\n{r.stderr}"
        assert f"{name}: ok" in r.stdout, r.stdout
        return
    assert r.returncode == 1, (f"{block.id} is marked invalid but `polis check` says "
                               f"{r.returncode}:\n{r.stdout}{r.stderr}")
    assert r.stderr.strip(), "no error printed"
    if block.after and f"polis check -c {name}" in block.after:
        # the transcript that follows shows the errors: each must be what polis prints
        shown = [ln for ln in block.after.split("\n") if ln.startswith(f"{name}:")]
        assert shown, f"{block.id}: the transcript shows no error line"
        got = r.stderr.split("\n")
        missing = [ln for ln in shown if ln not in got]
        assert not missing, f"{block.id}: documented errors not printed: {missing}\n{r.stderr}"


@pytest.mark.parametrize("path", example_files())
def test_example_config(path, polis_bin):
    r = check(polis_bin, REPO, path)
    assert r.returncode == 0, f"{path} fails `polis check`:\n{r.stderr}"
    assert f"{path}: ok" in r.stdout, r.stdout
