"""A YAML manifest whose scripts are the rows of a CSV file: `scripts_csv: prompts.csv`.

The YAML holds what is job-wide (`job`, `output`, `defaults`) and the CSV one prompt per row, as
a CSV manifest does; a blank cell takes the default. The CSV is read under the rules of a text
file (relative to the manifest's folder, never outside it), and so are the paths it names.
Problems in a row name the CSV file, its line and row.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.manifest.models import MAX_MANIFEST_BYTES, Source
from pipeline.manifest.paths import PathProblem, read_text_file
from pipeline.manifest.readers import Loc, Locator, RawManifest, read_csv

KEY = "scripts_csv"


@dataclass(frozen=True)
class LinkedLocator:
    """The scripts are located in the CSV, everything else in the YAML."""

    manifest: Locator
    rows: Locator

    def source(self, loc: Loc) -> Source:
        """The CSV's place for `scripts...`, the manifest's for any other key."""
        return (self.rows if loc[:1] == ("scripts",) else self.manifest).source(loc)


def with_csv_scripts(raw: RawManifest) -> RawManifest:
    """`raw` with the rows of its `scripts_csv` as its scripts; `raw` itself without one."""
    if KEY not in raw.data:
        return raw
    value = raw.data[KEY]
    where = raw.locator.source((KEY,))
    if "scripts" in raw.data:
        raise where.error("give either scripts or scripts_csv, not both")
    if not isinstance(value, str) or not value.lower().endswith(".csv"):
        raise where.error("must be a .csv file, relative to the manifest's folder")
    try:
        text = read_text_file(value, raw.folder, limit=MAX_MANIFEST_BYTES, what="a CSV manifest")
    except PathProblem as exc:
        raise where.error(str(exc)) from exc
    rows = read_csv(raw.folder.name_of(value), text, raw.folder)
    data = {key: item for key, item in raw.data.items() if key != KEY}
    return RawManifest(
        file=raw.file,
        data={**data, "scripts": rows.data["scripts"]},
        locator=LinkedLocator(raw.locator, rows.locator),
        folder=raw.folder,
    )
