"""What the README promises about the clone and itself (issue 21, item 10): the files its flows
write are ignored by git, its contents list matches its headings, the test run's length is said,
and ``copy_claims`` comes with the Auth0 Action that puts those claims in the token."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def outside_code(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_file_the_readmes_flows_write_in_the_clone_is_ignored() -> None:
    written = set(re.findall(r"> ([\w.-]+\.(?:toml|log))\b", README))
    written |= set(re.findall(r"^cp config\.starter\.toml ([\w.-]+)", README, re.M))
    assert {"config.toml", "config.local.toml", "dev.log", "serve.log"} <= written
    patterns = [
        line.strip().lstrip("/")
        for line in (ROOT / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]
    for name in written:
        assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{name} is not in .gitignore"
    # The shipped configs stay tracked.
    for shipped in ("config.example.toml", "config.starter.toml"):
        assert not any(fnmatch.fnmatch(shipped, p) for p in patterns), shipped


def test_the_contents_list_every_section_and_only_those() -> None:
    lines = outside_code(README)
    headings = [line.split(" ", 1)[1] for line in lines if line.startswith(("## ", "### "))]
    anchors = {github_anchor(h) for h in headings}
    contents = README.split("**Contents**", 1)[1].split("\n## ", 1)[0]
    linked = re.findall(r"\]\(#([^)]+)\)", contents)
    assert sorted(linked) == sorted(anchors), (
        "the README's contents list and its ## / ### headings differ"
    )
    # Right after the introduction, before the first section.
    assert README.index("**Contents**") < README.index("\n## ")


def test_the_quick_start_says_how_long_the_tests_take() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"about \d+ minutes", quick_start)


@pytest.mark.parametrize("config", ["config.example.toml", "config.starter.toml"])
def test_the_configs_say_that_auth0_needs_an_action_for_copy_claims(config: str) -> None:
    text = (ROOT / config).read_text()
    at = text.index('copy_claims = ["given_name", "family_name", "email"]')
    comment = text[max(0, at - 400) : at]
    assert "Action" in comment
    assert "setCustomClaim" in comment


def test_the_auth0_recipe_has_the_action_for_copy_claims() -> None:
    recipe = README.split("### Recipe: Auth0 and a SPA", 1)[1].split("\n### ", 1)[0]
    assert "exports.onExecutePostLogin" in recipe
    for claim in ("given_name", "family_name", "email"):
        assert f'api.accessToken.setCustomClaim("{claim}", event.user.{claim})' in recipe
