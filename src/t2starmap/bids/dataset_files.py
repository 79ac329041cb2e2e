"""The files at the root of the output folder, the same bytes from every run into it:
``dataset_description.json`` (the input's authors, how to acknowledge), ``.bidsignore`` and
``README.md`` (:func:`shared_files`). Concurrent jobs rewrite them in place."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from t2starmap import __version__
from t2starmap.bids.conventions import BIDS_VERSION, CODE_URL
from t2starmap.bids.outputs import SOURCE_LINK

#: Listed in the output's .bidsignore: statistic maps the schema has no suffix for, the
#: parametric maps of BOLD runs in ``func/`` (named as fMRIPrep names them; the schema knows
#: T2starmap, R2starmap and S0map in ``anat/`` only), and the app's own files.
BIDSIGNORE = (
    "*_statmap.nii.gz",
    "*_statmap.json",
    "**/func/*starmap.nii.gz",
    "**/func/*starmap.json",
    "**/func/*_S0map.nii.gz",
    "**/func/*_S0map.json",
    "*_record.json",
    "logs",
    "group_*",
    "*.html",
    "figures",
)


def dataset_description(bids_dir: Path) -> dict[str, Any]:
    """Identical for every run into the same output from the same input (concurrent jobs
    rewrite it with the same bytes)."""
    generated_by: dict[str, Any] = {
        "Name": "t2starmap",
        "Version": __version__,
        "Description": "Voxel-wise mono-exponential T2*/R2*/S0 fit of multi-echo GRE data",
        "CodeURL": CODE_URL,
    }
    container = os.environ.get("T2STARMAP_CONTAINER_TYPE")
    if container:
        generated_by["Container"] = {
            "Type": container,
            "Tag": os.environ.get("T2STARMAP_CONTAINER_TAG", f"t2starmap:{__version__}"),
        }
    description = {
        "Name": "t2starmap: T2*, R2* and S0 maps",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "Authors": _input_authors(bids_dir),
        "HowToAcknowledge": HOW_TO_ACKNOWLEDGE,
        "GeneratedBy": [generated_by],
        "SourceDatasets": [{"URL": f"bids:{SOURCE_LINK}:"}],
        "DatasetLinks": {SOURCE_LINK: Path(bids_dir).resolve().as_uri()},
    }
    if not description["Authors"]:
        del description["Authors"]
    return description


#: The files at the output's root that every run into it writes (the same bytes from the same
#: input): their names, known without reading the input.
SHARED_FILES = ("dataset_description.json", ".bidsignore", "README.md")


def shared_files(bids_dir: Path) -> dict[str, str]:
    """The files at the output's root, name -> text: the same bytes from every run into the
    same output from the same input (concurrent jobs rewrite them in place)."""
    return {
        "dataset_description.json": json.dumps(dataset_description(bids_dir), indent=2) + "\n",
        ".bidsignore": "\n".join(BIDSIGNORE) + "\n",
        "README.md": README.format(version=__version__, how=HOW_TO_ACKNOWLEDGE),
    }


#: The output's ``README.md``.
README = """# t2starmap derivatives

T2*, R2* and S0 maps fitted voxel by voxel to the multi-echo gradient-echo (MEGRE) images of
the dataset that `dataset_description.json` links to (`SourceDatasets`), by t2starmap
{version} (https://github.com/t2starmap/t2starmap).

- `sub-<label>/[ses-<label>/]anat/`: the maps of each echo set; each image's JSON sidecar
  gives its units, its sources, the fit method, noise level and corrections;
  `*_record.json` is what the pages and the group level read;
- `sub-<label>[_ses-<label>].html`: one quality-control page per participant and session;
- `group_T2starmap.tsv` (+ `.json`) and `group_report.html`: the group level's table and page;
- `logs/`: the settings of every run, the sets that failed (`logs/failures/`) and the methods
  paragraphs.

How to acknowledge: {how}.
"""


#: ``HowToAcknowledge`` of the output's ``dataset_description.json``.
HOW_TO_ACKNOWLEDGE = (
    "Describe the maps with the methods paragraph t2starmap wrote for them, with its "
    "references: logs/CITATION.md (and .bib, .html) for every published set, "
    "logs/CITATION_sub-<label>[_ses-<label>].md for one participant page; the pages show it"
)


def _input_authors(bids_dir: Path) -> list[str]:
    """The ``Authors`` of the input dataset (the derivative's, unless someone lists others);
    none when it has none or its description cannot be read."""
    try:
        authors = json.loads((Path(bids_dir) / "dataset_description.json").read_text("utf-8"))
        authors = authors.get("Authors") if isinstance(authors, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    if not isinstance(authors, list):
        return []
    return [a for a in authors if isinstance(a, str) and a.strip()]
