"""The methods paragraphs to cite (``logs/CITATION*``, the pages' last section), written from
the records alone: unit cases on records made here, then real runs of the app."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from t2starmap.bids.func_records import PublishedRun
from t2starmap.bids.outputs import ESTIMATION_REFERENCE, output_files
from t2starmap.bids.records import PublishedSet, SetStatistics, Source, load_published
from t2starmap.cli.run import main
from t2starmap.report.methods import (
    COMBINATION_REFERENCE,
    NOISE_METHODS,
    bibtex,
    citation,
    citation_files,
    markdown,
)
from t2starmap.sim.slices import make_slice_phantom, write_slice_megre

REF_A = (
    "Fernandez-Seara MA, Wehrli FW. Postprocessing technique to correct for background "
    "gradients in image-based R2* measurements. Magn Reson Med 2000;44:358-366"
)
REF_B = "Hirsch NM, Preibisch C. T2* mapping. AJNR Am J Neuroradiol 2013;34:E65-E68"
CORRECTED = {
    "EstimationAlgorithm": "Noise-aware least squares; then corrected",
    "NoiseSigmaNote": "ghosts, not noise",
    "T2starRange": [0.001, 1.0],
    "GoodnessOfFit": "reduced chi-square of the residuals",
    "PhaseVerdict": "coherent",
    "PhaseVerdictNote": "one frequency in 99% of the bright voxels",
    "B0Correction": "through-slice",
    "B0CorrectionReference": [REF_A, REF_B],
    "B0CorrectionThreshold": 0.3,
    "B0CorrectedFraction": 0.5,
    "B0FieldMapMethod": "phase differences",
    "B0SliceProfileSource": "sinc:2.7 (from the Siemens protocol)",
    "ComputeDevice": "cpu",
}


def record(name: str = "01", **fields: object) -> PublishedSet:
    entities = {"subject": name}
    base = PublishedSet(
        entities=entities,
        files=output_files(entities),
        sources=(
            Source("sub-01/anat/a_echo-1_MEGRE.nii.gz", 0.003, {"MagneticFieldStrength": 3}),
            Source("sub-01/anat/a_echo-2_MEGRE.nii.gz", 0.0105, {}),
        ),
        n_voxels=100,
        failed_fraction=0.02,
        noise_sigma=12.5,
        noise_model="rician",
        noise_coils=1.0,
        noise_method="residuals",
        status_counts={"good": 98},
        fit_method="nlls",
        algorithm="LM",
        device="cpu",
        statistics=SetStatistics(),
        noise_candidates={"residuals": 12.5, "real-channel": 60.1},
        part_sources=("sub-01/anat/a_echo-1_part-phase_MEGRE.nii.gz",),
        methods=CORRECTED,
        software={"t2starmap": "9.9", "Python": "3.11.7", "PyTorch": "2.13.0"},
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_a_corrected_set_says_what_was_done_with_numbered_references() -> None:
    cite = citation([record()])
    (text,) = [s.text for s in cite.sets]
    assert cite.references == (ESTIMATION_REFERENCE, REF_A, REF_B)
    assert "computed with t2starmap [1] from 2 magnitude echoes" in text
    assert "(TE 3.00-10.50 ms, 3 T) and their phase images" in text
    assert "noise-aware least squares (method nlls, rician noise model" in text
    assert "sigma = 12.5 (image units), " + NOISE_METHODS["residuals"] in text
    assert "the other estimates were real-channel 60.1. Ghosts, not noise." in text
    assert "T2* was bounded to 1 ms-1 s" in text
    assert "the fit failed (no usable estimate" in text and "in 2.0 % of the voxels" in text
    assert "The phase was judged coherent: one frequency in 99%" in text
    assert "through-slice gradient of the field [2, 3]" in text and "50 % of the mask" in text
    assert "The slice profile of the correction was sinc:2.7 (from the Siemens protocol)" in text
    assert "Software: t2starmap 9.9, Python 3.11.7, PyTorch 2.13.0; computed on cpu." in text


def test_the_noise_levels_caveat_is_said_with_sigma() -> None:
    (item,) = citation([record(noise_caveat="magnitude only: sigma may be off")]).sets
    assert "Ghosts, not noise. Caveat: magnitude only: sigma may be off." in item.text
    (plain,) = citation([record()]).sets
    assert "Caveat" not in plain.text


@pytest.mark.parametrize("method", sorted(NOISE_METHODS))
def test_each_noise_choice_is_worded(method: str) -> None:
    (item,) = citation([record(noise_method=method, noise_candidates={})]).sets
    assert NOISE_METHODS[method] in item.text and "other estimates" not in item.text


def test_a_set_without_correction_says_why_and_cites_nothing_for_it() -> None:
    methods = {"B0Correction": "none", "B0CorrectionNote": "the set has no phase"}
    cite = citation([record(methods=methods, part_sources=(), noise_sigma=None)])
    (text,) = [s.text for s in cite.sets]
    assert "No field-gradient correction was applied: the set has no phase." in text
    assert "No noise level was estimated" in text and "phase images" not in text
    assert cite.references == (ESTIMATION_REFERENCE,)


def test_references_are_shared_between_sets_and_the_files_agree() -> None:
    records = [record("02"), record("01", methods={"B0Correction": "none"})]
    cite = citation(records)
    assert [s.name for s in cite.sets] == ["sub-01", "sub-02"]  # in name order
    assert cite.references == (ESTIMATION_REFERENCE, REF_A, REF_B)
    text = markdown(cite, "title")
    assert text.startswith("# title\n") and "## sub-01\n" in text and "## sub-02\n" in text
    assert "3. " + REF_B in text and r"R2\*" in text
    bib = bibtex(cite)
    assert bib.count("@article{") == 2 and bib.count("@misc{") == 1
    assert "author = {Fernandez-Seara MA and Wehrli FW}" in bib
    assert "journal = {Magn Reson Med}" in bib and "pages = {358-366}" in bib
    page = citation_files(records, "a <title>")[".html"]
    assert "a &lt;title&gt;" in page and "Fernandez-Seara MA" in page


def run(bids: Path, out: Path, *extra: str) -> int:
    return main([str(bids), str(out), "participant", "--skip-bids-validation", "-q", *extra])


@pytest.fixture(scope="module")
def sliced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("methods") / "bids"
    write_slice_megre(root, make_slice_phantom((16, 16, 5), snr=100.0, seed=3))
    return root


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ([], "corrected for the through-slice gradient of the field [2, 3]"),
        (["--b0-correction", "none"], "No field-gradient correction was applied"),
    ],
    ids=["corrected", "not corrected"],
)
def test_a_participant_run_writes_its_methods_from_its_records(
    sliced: Path, tmp_path: Path, extra: list[str], said: str
) -> None:
    out = tmp_path / "out"
    assert run(sliced, out, *extra) == 0
    records = load_published(out)
    text = (out / "logs" / "CITATION.md").read_text()
    title = "t2starmap: methods of the echo sets and BOLD runs this run published"
    assert text == citation_files(records, title)[".md"]
    assert said.replace("*", r"\*") in text
    assert (out / "logs" / "CITATION_sub-01.md").read_text().split("\n", 1)[1] == text.split(
        "\n", 1
    )[1]
    assert (out / "logs" / "CITATION.bib").read_text() == bibtex(citation(records))
    page = (out / "sub-01.html").read_text()
    assert 'id="methods"' in page and said in page and "logs/CITATION_sub-01.md" in page
    sidecar = json.loads((out / "sub-01" / "anat" / "sub-01_T2starmap.json").read_text())
    assert records[0].methods["B0Correction"] == sidecar["B0Correction"]


def test_the_group_level_covers_every_published_set(example: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(example, out, "--participant-label", "01") == 0
    assert run(example, out, "--participant-label", "02") == 0
    participant_text = (out / "logs" / "CITATION.md").read_text()  # the last run's sets
    assert "## sub-02_ses-1" in participant_text and "## sub-01" not in participant_text
    assert main([str(example), str(out), "group", "-q"]) == 0
    text = (out / "logs" / "CITATION.md").read_text()
    assert [line for line in text.splitlines() if line.startswith("## sub")] == [
        "## sub-01",
        "## sub-02_ses-1",
        "## sub-02_ses-2",
    ]
    assert "## sub-01" not in (out / "logs" / "CITATION_sub-02_ses-1.md").read_text()


def test_misfit_is_said_apart_from_failure() -> None:
    """Issue 27: the paragraph does not count misfit voxels as failed."""
    (item,) = citation([record(failed_fraction=0.001, misfit_fraction=0.42)]).sets
    assert "failed (no usable estimate: a bound reached, no convergence or unusable" in item.text
    assert "in 0.1 % of the voxels" in item.text
    assert "did not follow the model (estimate kept, its standard error inflated) in 42.0 %" in (
        item.text
    )


def run_record(**fields: object) -> PublishedRun:
    entities = {"subject": "01", "task": "rest"}
    base = PublishedRun(
        entities=entities,
        files={},
        sources=tuple(
            Source(f"sub-01/func/sub-01_task-rest_echo-{k}_bold.nii.gz", te, {})
            for k, te in enumerate((0.0145, 0.0385, 0.0625), 1)
        ),
        n_volumes=200,
        repetition_time=2.0,
        fit_type="nlls",
        algorithm="Mono-exponential decay fitted by maximum likelihood (t2smap --fittype nlls)",
        preprocessed=False,
        n_voxels=300,
        mask_counts={"0": 50, "1": 20, "2": 30, "3": 250},
        failed_fraction=0.01,
        misfit_fraction=0.05,
        status_counts={"good": 282},
        statistics=SetStatistics(),
        tsnr=None,
        software={"t2starmap": "9.9", "Python": "3.11.7"},
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_a_bold_run_says_what_was_done() -> None:
    """A multi-echo BOLD run's paragraph: the run, motion, the adaptive mask, the fit, the
    combination (Posse), the software; echo sets come first, and share the numbering."""
    cite = citation([run_record(), record()])
    assert [s.name for s in cite.sets] == ["sub-01", "sub-01_task-rest"]
    text = cite.sets[1].text
    assert "from the 3 echoes of a multi-echo BOLD run (TE 14.50-62.50 ms, 200 volumes" in text
    assert "TR 2 s), the raw echoes, not motion-corrected." in text
    assert "300 voxels had at least one good echo (1 good echo: 20, 2 good echoes: 30, 3" in text
    assert "Mono-exponential decay fitted by maximum likelihood (t2smap --fittype nlls);" in text
    assert "in 1.0 % of the voxels" in text and "model (estimate kept" in text
    assert "computed with t2starmap [1]" in text and "good echoes [4]." in text
    assert cite.references[3] == COMBINATION_REFERENCE
    assert text.endswith("Software: t2starmap 9.9, Python 3.11.7.")
    preproc = citation([run_record(preprocessed=True)]).sets[0].text
    assert "fMRIPrep's motion-corrected echoes (desc-preproc)" in preproc
