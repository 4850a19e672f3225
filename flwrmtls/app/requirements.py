"""An app's requirements: the ``[project] dependencies`` of its pyproject.toml, checked.

Rules:

* Each entry is a PEP 508 requirement (:class:`packaging.requirements.Requirement`) naming a
  distribution by name, with optional extras, version specifiers and an environment marker.
  Refused, in one line naming the entry and what to write instead: anything PEP 508 does not
  parse (so nothing pip would read as an option: ``--index-url``, ``-e``, ``-r``; no path, no
  VCS URL), a direct reference (``name @ URL``: any URL, ``file:`` ones included), an entry
  that is not a string, more than :data:`MAX_REQUIREMENTS` entries, or one longer than
  :data:`MAX_REQUIREMENT_CHARS` characters. Where a requirement is fetched from is the
  operator's choice (pip's own configuration where the app runs), never the submitter's.
* What is kept, and later handed to pip, is the requirement as ``packaging`` writes it back
  (its canonical text), never the submitter's string.
* Checked when an app is bundled (the CLI), when the link accepts a bundle
  (:func:`flwrmtls.app.bundling.check_bundle`), and again where the app runs
  (:mod:`flwrmtls.runs.appenvs`). Pure: values in, requirements or one InputError out.
"""

from __future__ import annotations

from packaging.requirements import InvalidRequirement, Requirement

from flwrmtls.errors import InputError

__all__ = ["MAX_REQUIREMENTS", "MAX_REQUIREMENT_CHARS", "parse_requirements"]

MAX_REQUIREMENTS = 100
"""The most ``[project] dependencies`` an app may list."""
MAX_REQUIREMENT_CHARS = 200
"""The longest requirement accepted (a name, extras, specifiers and a marker fit easily)."""

_HOW = 'list requirements as PEP 508 names and versions, e.g. "scikit-learn>=1.3"'


def _one(entry: object, where: str) -> Requirement:
    if not isinstance(entry, str):
        raise InputError(f"{where}: a dependency must be a string, not {entry!r}; {_HOW}")
    shown = entry if len(entry) <= 80 else f"{entry[:80]}..."
    if len(entry) > MAX_REQUIREMENT_CHARS:
        raise InputError(
            f"{where}: dependency {shown!r} is longer than {MAX_REQUIREMENT_CHARS} characters"
        )
    try:
        requirement = Requirement(entry)
    except InvalidRequirement:
        raise InputError(
            f"{where}: dependency {shown!r} is not a PEP 508 requirement (no pip options, "
            f"paths or URLs); {_HOW}"
        ) from None
    if requirement.url is not None:
        raise InputError(
            f"{where}: dependency {shown!r} names a URL: packages come from the index the "
            f"operator configured where the app runs, never from the app; {_HOW}"
        )
    return requirement


def parse_requirements(entries: object, where: str) -> tuple[Requirement, ...]:
    """The requirements ``entries`` (``[project] dependencies``) lists; ``where`` names the
    file (or bundle) in the one-line InputError that refuses a bad one."""
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise InputError(f"{where}: [project] dependencies must be a list of strings")
    if len(entries) > MAX_REQUIREMENTS:
        raise InputError(
            f"{where}: [project] dependencies lists {len(entries)} requirements; at most "
            f"{MAX_REQUIREMENTS} are accepted"
        )
    return tuple(_one(entry, where) for entry in entries)
