"""constraints.txt: every package the requirements files pull in (but torch) is pinned to one exact version, and the
README's install lines and .ci/run install through it."""
import importlib.metadata
import os
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNPINNED = {"torch"}  # its CUDA builds differ by machine


def read_requirements(name):
    """The requirements of a requirements file, following -r includes."""
    requirements = []
    with open(os.path.join(ROOT, name)) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line.startswith("-r "):
                requirements += read_requirements(line[3:].strip())
            elif line:
                requirements.append(Requirement(line))
    return requirements


def pins():
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+!\-]+", line) for line in lines), "only name==version lines"
    names = [canonicalize_name(line.split("==")[0]) for line in lines]
    assert len(names) == len(set(names)), "a package is pinned twice"
    return dict(zip(names, (line.split("==")[1] for line in lines)))


def closure(requirements):
    """Canonical names of the requirements and, for those installed here, everything they require in turn (with
    their markers and extras as pip evaluates them); torch and what it alone pulls in (nvidia-*, triton) are left
    to torch."""
    seen, todo = set(), [(requirement, "") for requirement in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        if name in UNPINNED:
            continue
        extras = [e for e in requirement.extras if (name, e) not in seen]
        if name in seen and not extras:
            continue
        seen.add(name)
        seen.update((name, e) for e in extras)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for wanted_extra in [""] + list(requirement.extras):
            todo += [(Requirement(r), wanted_extra) for r in requires]
    return {item for item in seen if isinstance(item, str)}


def test_every_required_package_but_torch_is_pinned():
    pinned = pins()
    assert not UNPINNED & set(pinned), "torch must not be pinned"
    needed = closure(read_requirements("requirements-dev.txt"))
    assert {"numpy", "transformers", "lm-eval", "wandb", "huggingface-hub"} <= needed
    assert sorted(needed - set(pinned)) == []


def test_install_lines_use_the_constraints():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert re.search(r"pip install -r requirements-dev\.txt -c constraints\.txt", ci)
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    installs = re.findall(r"^pip install -r \S+.*$", readme, re.MULTILINE)
    assert installs and all("-c constraints.txt" in line for line in installs), installs
