"""README.md, the front door: short, and its layout section names every module of the package."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _layout_block() -> str:
    match = re.search(r"## Layout\n.*?```\n(.*?)```", README, re.S)
    assert match, "README.md lost its '## Layout' section with the module tree"
    return match.group(1)


def test_readme_is_at_most_300_lines():
    assert len(README.splitlines()) <= 300


def test_layout_names_every_module():
    layout = _layout_block()
    package = ROOT / "simclr_tf"
    missing = []
    for path in sorted(package.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py") and path.parent != package:
            name = path.parent.name + "/"  # a sub-package is listed by its folder
        else:
            name = path.name
        if name not in layout:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"README.md's layout does not mention: {missing}"


def test_links_to_docs_point_to_pages_that_exist():
    for target in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / target).exists(), target
