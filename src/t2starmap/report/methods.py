"""The methods paragraph to cite: what was done to each published echo set and multi-echo
BOLD run, from its record.

As fMRIPrep's ``logs/CITATION.md``: one paragraph per echo set, written from the set's record
(:class:`t2starmap.bids.records.PublishedSet`: the fit's sidecar fields in ``methods``, the
software in ``software``), never by hand: the fit and noise model, how the noise level was
chosen, the phase verdict, the field-gradient correction applied or why not, the slice
profile, the software versions, and the references the sidecars name, numbered. A BOLD run's
paragraph (from :class:`t2starmap.bids.func_records.PublishedRun`) gives the run, whether its
echoes were motion-corrected, the adaptive mask, the fit, the optimal combination and the
software. Rendered as Markdown, BibTeX and HTML (:func:`citation_files`); the pages show the
same paragraphs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from t2starmap.bids.func_records import PublishedRun
from t2starmap.bids.outputs import ESTIMATION_REFERENCE
from t2starmap.bids.records import PublishedSet
from t2starmap.report.html import render

#: How each ``NoiseSigmaMethod`` chose the noise level, as a clause of the paragraph.
NOISE_METHODS = {
    "given": "was given by the user (--noise-sigma)",
    "background-quantiles": "was estimated from the background air of the first echo (its "
    "lower quartile and median under a central chi distribution)",
    "real-channel": "was estimated from the real channel of the first echo's background air "
    "(1.4826 x its median absolute deviation)",
    "echo-differences": "was estimated from the differences of later echoes in the background "
    "air (ghosts repeat from echo to echo and cancel, noise does not)",
    "residuals": "was estimated from the residuals of a weighted log-linear fit in bright "
    "tissue (an upper bound on its noise)",
    "local-variance": "was estimated from the mode of the local variance of bright voxels "
    "(no usable background air)",
}
#: The software the record names, in the order the paragraph lists them.
SOFTWARE_ORDER = ("t2starmap", "Python", "PyTorch", "NumPy", "nibabel")
_ARTICLE = re.compile(
    r"^(?P<authors>[^.]+)\. (?P<title>.+?)\. (?P<journal>[^.;]+?) "
    r"(?P<year>\d{4});(?P<volume>[^:;]+):(?P<pages>\S+?)\.?$"
)


@dataclass(frozen=True)
class SetMethods:
    """The paragraph of one echo set: its name, its sentences (citations as ``[n]``)."""

    name: str
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


@dataclass(frozen=True)
class Citation:
    """The paragraphs of some echo sets and the references they cite, numbered from 1."""

    sets: tuple[SetMethods, ...]
    references: tuple[str, ...]


def _number(references: list[str], reference: str) -> str:
    """``[n]``, ``reference``'s number among ``references`` (appended when new)."""
    if reference not in references:
        references.append(reference)
    return f"[{references.index(reference) + 1}]"


def _cites(references: list[str], value: Any) -> str:
    """`` [1, 2]`` for one reference or a list of them; empty for none."""
    items = value if isinstance(value, list) else [value] if value else []
    numbers = [_number(references, str(item))[1:-1] for item in items]
    return f" [{', '.join(numbers)}]" if numbers else ""


def _acquisition(record: PublishedSet) -> str:
    """The input: echoes, echo times, parts, scanner."""
    times = record.echo_times
    meta = record.sources[0].metadata if record.sources else {}
    scanner = " ".join(
        str(meta[k]) for k in ("Manufacturer", "ManufacturerModelName") if meta.get(k)
    )
    field = f"{meta['MagneticFieldStrength']:g} T " if meta.get("MagneticFieldStrength") else ""
    where = f", {field}{scanner}".rstrip() if (field or scanner) else ""
    parts = ""
    if record.part_sources:
        phase = any("part-phase" in p for p in record.part_sources)
        parts = f" and their {'phase' if phase else 'real and imaginary'} images"
    return (
        f"{len(times)} magnitude echoes of a multi-echo gradient-echo acquisition (TE "
        f"{times[0] * 1e3:.2f}-{times[-1] * 1e3:.2f} ms{where}){parts}"
    )


def _noise(methods: Mapping[str, Any], record: PublishedSet) -> str:
    """How sigma was chosen, with the candidates and the note."""
    code = record.noise_method
    if record.noise_sigma is None or code == "none":
        return "No noise level was estimated; the fit is the Gaussian least-squares fit."
    how = NOISE_METHODS.get(code, f"was chosen by the method '{code}'")
    text = f"The noise standard deviation, sigma = {record.noise_sigma:.4g} (image units), {how}"
    candidates = {k: v for k, v in record.noise_candidates.items() if k != code}
    if candidates:
        listed = ", ".join(f"{k} {v:.4g}" for k, v in sorted(candidates.items()))
        text += f"; the other estimates were {listed}"
    note = str(methods.get("NoiseSigmaNote") or "")
    text += "." + (f" {note[:1].upper()}{note[1:]}." if note else "")
    return text + (f" Caveat: {record.noise_caveat}." if record.noise_caveat else "")


def _fit(methods: Mapping[str, Any], record: PublishedSet) -> str:
    algorithm = str(methods.get("EstimationAlgorithm") or record.algorithm).split("; then")[0]
    coils = f", {record.noise_coils:g} effective coil(s)" if record.noise_sigma else ""
    return (
        f"Each of the {record.n_voxels} voxels of the signal mask was fitted with the "
        f"mono-exponential decay S(TE) = S0 exp(-TE R2*): {algorithm[0].lower()}{algorithm[1:]} "
        f"(method {record.fit_method}, {record.noise_model} noise model{coils})."
    )


def _flags(methods: Mapping[str, Any], record: PublishedSet) -> str:
    """The bounds, the goodness-of-fit test and the share of failed voxels."""
    clauses = []
    bounds = methods.get("T2starRange")
    if isinstance(bounds, list | tuple) and len(bounds) == 2:
        clauses.append(f"T2* was bounded to {bounds[0] * 1e3:g} ms-{bounds[1]:g} s")
    test = str(methods.get("GoodnessOfFit") or "")
    if test and not test.startswith("not assessed"):
        clauses.append(f"the goodness of fit was judged by the {test}")
    clauses.append(_shares(record.failed_fraction, record.misfit_fraction))
    text = "; ".join(clauses)
    return text[0].upper() + text[1:] + "."


def _shares(failed: float, misfit: float) -> str:
    """The failed share (no usable estimate) and, apart, the misfit share (an estimate with an
    inflated standard error), as a clause."""
    return (
        f"the fit failed (no usable estimate: a bound reached, no convergence or unusable "
        f"input) in {100 * failed:.1f} % of the voxels, and the decay did not follow the model "
        f"(estimate kept, its standard error inflated) in {100 * misfit:.1f} %"
    )


def _phase_and_correction(methods: Mapping[str, Any], references: list[str]) -> list[str]:
    sentences = []
    if methods.get("PhaseVerdict"):
        note = methods.get("PhaseVerdictNote", "")
        sentences.append(f"The phase was judged {methods['PhaseVerdict']}: {note}.")
    if methods.get("B0Correction") == "through-slice":
        fraction = methods.get("B0CorrectedFraction")
        share = "" if fraction is None else f"; {100 * fraction:.0f} % of the mask was corrected"
        sentences.append(
            "R2* was corrected for the through-slice gradient of the field"
            f"{_cites(references, methods.get('B0CorrectionReference'))} (field map from "
            f"{methods.get('B0FieldMapMethod', 'the complex fit')}; echoes whose dephasing "
            f"factor fell below {methods.get('B0CorrectionThreshold')} left out{share})."
        )
        profile = methods.get("B0SliceProfileSource") or methods.get("B0SliceProfile")
        if profile:
            sentences.append(f"The slice profile of the correction was {profile}.")
    else:
        why = methods.get("B0CorrectionNote")
        sentences.append("No field-gradient correction was applied" + (f": {why}." if why else "."))
    return sentences


def _software(record: PublishedSet | PublishedRun, methods: Mapping[str, Any]) -> str:
    versions = dict(record.software) or {"t2starmap": str(methods.get("SoftwareVersion", "?"))}
    listed = ", ".join(f"{k} {versions[k]}" for k in SOFTWARE_ORDER if k in versions)
    device = methods.get("ComputeDevice") or getattr(record, "device", None)
    return f"Software: {listed}" + (f"; computed on {device}." if device else ".")


def set_methods(record: PublishedSet, references: list[str]) -> SetMethods:
    """The paragraph of one published set; new references are appended to ``references``."""
    methods = record.methods
    software = _cites(references, methods.get("EstimationReference", ESTIMATION_REFERENCE))
    sentences = [
        f"T2*, R2* and S0 maps were computed with t2starmap{software} from {_acquisition(record)}.",
        _fit(methods, record),
        _noise(methods, record),
        _flags(methods, record),
        *_phase_and_correction(methods, references),
        _software(record, methods),
    ]
    return SetMethods(record.name, tuple(sentences))


#: The optimal combination's weights, by name (t2smap's ``--combmode``).
COMBINATION_REFERENCE = (
    "Posse S, Wiese S, Gembris D, Mathiak K, Kessler C, Grosse-Ruyken ML, Elghahwagi B, "
    "Richards T, Dager SR, Kiselev VG. Enhancement of BOLD-contrast sensitivity by single-shot "
    "multi-echo functional magnetic resonance imaging. Magn Reson Med 1999;42:87-97."
)


def run_methods(record: PublishedRun, references: list[str]) -> SetMethods:
    """The paragraph of one published multi-echo BOLD run; new references are appended to
    ``references``."""
    software = _cites(references, ESTIMATION_REFERENCE)
    times = record.echo_times
    motion = (
        "fMRIPrep's motion-corrected echoes (desc-preproc)"
        if record.preprocessed
        else "the raw echoes, not motion-corrected"
    )
    counts = ", ".join(
        f"{k} good echo{'es' if k != '1' else ''}: {n}"
        for k, n in sorted(record.mask_counts.items(), key=lambda kv: int(kv[0]))
        if k != "0"
    )
    shares = _shares(record.failed_fraction, record.misfit_fraction)
    sentences = [
        f"T2*, R2* and S0 maps and the optimally combined series were computed with "
        f"t2starmap{software} from the {len(times)} echoes of a multi-echo BOLD run (TE "
        f"{times[0] * 1e3:.2f}-{times[-1] * 1e3:.2f} ms, {record.n_volumes} volumes, TR "
        f"{record.repetition_time:g} s), {motion}.",
        f"The voxels with good signal were chosen by tedana's adaptive mask (dropout rule); "
        f"{record.n_voxels} voxels had at least one good echo ({counts}).",
        f"{record.algorithm.rstrip('.')}; {shares}.",
        f"The echoes were combined with weights TE exp(-TE/T2*) over each voxel's good "
        f"echoes{_cites(references, COMBINATION_REFERENCE)}.",
        _software(record, {}),
    ]
    return SetMethods(record.name, tuple(sentences))


def citation(records: Sequence[PublishedSet | PublishedRun]) -> Citation:
    """The paragraphs of ``records`` (echo sets, then BOLD runs, each in name order) and their
    references."""
    references: list[str] = []
    ordered = sorted(records, key=lambda r: (isinstance(r, PublishedRun), r.name))
    sets = tuple(
        run_methods(r, references) if isinstance(r, PublishedRun) else set_methods(r, references)
        for r in ordered
    )
    return Citation(sets, tuple(references))


def markdown(cite: Citation, title: str) -> str:
    """``CITATION.md``: a heading per set, its paragraph, then the numbered references."""
    lines = [f"# {title}", "", _PREAMBLE, ""]
    for item in cite.sets:
        lines += [f"## {item.name}", "", item.text.replace("*", r"\*"), ""]
    if cite.references:
        lines += ["## References", ""]
        lines += [f"{k}. {ref}" for k, ref in enumerate(cite.references, 1)]
    return "\n".join(lines).rstrip() + "\n"


_PREAMBLE = (
    "Generated by t2starmap from the records of the echo sets and BOLD runs below, to be "
    "copied into the methods section of a paper (adapt it freely; the references are numbered "
    "as cited)."
)


def _bib_key(reference: str, number: int) -> str:
    first = re.match(r"[A-Za-z-]+", reference)
    year = re.search(r"(19|20)\d{2}", reference)
    stem = (first.group(0) if first else "ref").replace("-", "").lower()
    return f"{stem}{year.group(0) if year else ''}_{number}"


def bibtex(cite: Citation) -> str:
    """``CITATION.bib``: an ``@article`` for each journal reference, ``@misc`` otherwise."""
    entries = []
    for number, reference in enumerate(cite.references, 1):
        key = _bib_key(reference, number)
        found = _ARTICLE.match(reference)
        if found:
            fields = dict(found.groupdict())
            fields["author"] = " and ".join(a.strip() for a in fields.pop("authors").split(","))
            body = ",\n".join(f"  {k} = {{{v}}}" for k, v in fields.items())
            entries.append(f"@article{{{key},\n{body}\n}}")
        else:
            entries.append(f"@misc{{{key},\n  note = {{{reference}}}\n}}")
    return "\n\n".join(entries) + ("\n" if entries else "")


def html(cite: Citation, title: str) -> str:
    """``CITATION.html``: the same paragraphs and references as a page."""
    return render("citation.html", title=title, citation=cite, preamble=_PREAMBLE)


def citation_files(records: Sequence[PublishedSet | PublishedRun], title: str) -> dict[str, str]:
    """Extension (``.md``, ``.bib``, ``.html``) -> text of the citation files of ``records``."""
    cite = citation(records)
    return {".md": markdown(cite, title), ".bib": bibtex(cite), ".html": html(cite, title)}
