"""What `radfusion synth` writes for the options it is given: a preset, each option
over it, the defaults under both.

A synthetic study keeps a physical field of view: the pixel spacing is the field of
view over the size (384 mm by default, so 64 pixels keep their historic ~6 mm and a
512-pixel slice gets 0.75 mm, not a 3 m field of view). `--pixel-spacing` sets the
spacing itself, `--slice-thickness` the slices'. A single value is the centre of the
historic spread (6 mm is drawn in 5.6-6.4 mm, as always); LOW-HIGH is drawn as given.

The "clinical" preset is a study as archives hold them: 512 x 512, 0.6-0.8 mm pixels
(a 307-410 mm field of view, kept if --size changes), 1-2.5 mm slices, 150-400 slices
drawn per patient, and a tenth RLE, 30% JPEG 2000 and 30% JPEG-LS (lossless), the rest
uncompressed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from radfusion.errors import UserError
from radfusion.synth.cohort import MAX_SPACING_MM, MIN_SIZE, MIN_SLICES

Span = float | tuple[float, float]


@dataclass(frozen=True)
class SynthOptions:
    """A cohort's geometry and storage, as `radfusion synth` takes them."""

    size: int = 64
    n_slices: int | tuple[int, int] = 32
    fov_mm: Span = 384.0  # 64 pixels of 6 mm: the historic geometry
    pixel_spacing_mm: Span | None = None  # None: fov_mm / size
    slice_thickness_mm: Span = 5.0
    rle_fraction: float = 0.25
    j2k_fraction: float = 0.0
    jpegls_fraction: float = 0.0


DEFAULTS = SynthOptions()
PRESETS = {
    "clinical": SynthOptions(
        size=512,
        n_slices=(150, 400),
        fov_mm=(307.2, 409.6),  # 0.6-0.8 mm pixels at 512
        slice_thickness_mm=(1.0, 2.5),
        rle_fraction=0.1,
        j2k_fraction=0.3,
        jpegls_fraction=0.3,
    ),
}


def _number_or_range(flag: str, text: str, kind: type) -> Any:
    """'6' -> 6.0, '0.6-0.8' -> (0.6, 0.8) (ints for kind=int)."""
    low, sep, high = str(text).partition("-")
    try:
        values = (kind(low), kind(high)) if sep else kind(low)
    except ValueError:
        example = "150 or 150-400" if kind is int else "0.7 or 0.6-0.8"
        raise UserError(f"{flag} takes a number or a LOW-HIGH range, not {text!r}", f"e.g. {flag} {example}") from None
    if isinstance(values, tuple) and values[1] < values[0]:
        raise UserError(f"{flag} {text} is an empty range", "give the lower end first")
    return values


def _low(value: Span | int | tuple[int, int]) -> float:
    return value[0] if isinstance(value, tuple) else value


def _over_size(fov: Span, size: int) -> Span:
    if isinstance(fov, tuple):
        return (round(fov[0] / size, 6), round(fov[1] / size, 6))
    return fov / size


def synth_options(preset: str | None, **given: str | int | float | None) -> dict[str, Any]:
    """generate_cohort's geometry and storage arguments for the command's options
    (None where not given): given > preset > defaults. Wrong values raise UserError
    naming the option."""
    base = PRESETS[preset] if preset else DEFAULTS
    ranged = {"slices": ("n_slices", int), "fov_mm": ("fov_mm", float)}
    ranged |= {"pixel_spacing": ("pixel_spacing_mm", float), "slice_thickness": ("slice_thickness_mm", float)}
    chosen: dict[str, Any] = {}
    for option, value in given.items():
        if value is None:
            continue
        flag = "--" + option.replace("_", "-")
        if option in ranged:
            field, kind = ranged[option]
            chosen[field] = _number_or_range(flag, str(value), kind)
        else:
            chosen[option] = value
    if "fov_mm" in chosen and "pixel_spacing_mm" in chosen:
        raise UserError("--fov-mm and --pixel-spacing both set the pixel spacing", "give one of them")
    if "fov_mm" in chosen:  # a field of view given: it sets the spacing, not the preset's
        chosen["pixel_spacing_mm"] = None
    options = replace(base, **chosen)
    _check(options)
    pixel_spacing = options.pixel_spacing_mm
    if pixel_spacing is None:
        pixel_spacing = _over_size(options.fov_mm, options.size)
    return {
        "n_slices": options.n_slices,
        "rows": options.size,
        "cols": options.size,
        "pixel_spacing_mm": pixel_spacing,
        "slice_thickness_mm": options.slice_thickness_mm,
        "rle_fraction": options.rle_fraction,
        "j2k_fraction": options.j2k_fraction,
        "jpegls_fraction": options.jpegls_fraction,
    }


def _check(options: SynthOptions) -> None:
    if _low(options.n_slices) < MIN_SLICES:
        raise UserError(
            f"--slices must be at least {MIN_SLICES}, not {_low(options.n_slices)}",
            f"ask for {MIN_SLICES} slices or more, e.g. --slices 32",
        )
    if options.size < MIN_SIZE:
        raise UserError(
            f"--size must be at least {MIN_SIZE}, not {options.size}",
            f"ask for {MIN_SIZE} pixels or more, e.g. --size 64",
        )
    spans = (
        ("--fov-mm", options.fov_mm, MAX_SPACING_MM * options.size),
        ("--pixel-spacing", options.pixel_spacing_mm, MAX_SPACING_MM),
        ("--slice-thickness", options.slice_thickness_mm, MAX_SPACING_MM),
    )
    for flag, span, most in spans:
        if span is not None and not 0 < _low(span) <= (span[1] if isinstance(span, tuple) else span) <= most:
            raise UserError(f"{flag} must be above 0 and at most {most:g} mm, not {span}", f"e.g. {flag} 0.7")
    shares = (
        ("--rle-fraction", options.rle_fraction),
        ("--j2k-fraction", options.j2k_fraction),
        ("--jpegls-fraction", options.jpegls_fraction),
    )
    for flag, share in shares:
        if not 0.0 <= share <= 1.0:
            raise UserError(f"{flag} must be within [0, 1], not {share}", "give a fraction, e.g. 0.25")
    total = options.rle_fraction + options.j2k_fraction + options.jpegls_fraction
    if total > 1.0 + 1e-9:
        raise UserError(
            f"--rle-fraction, --j2k-fraction and --jpegls-fraction add up to {total:g}",
            "give shares that add up to 1 or less (the rest is uncompressed)",
        )


def patient_counts(text: str | int, sites: int | None) -> int | list[int]:
    """--patients: a count (per site with --sites), or with --sites one count per site
    as a comma list ('200,120,80'). Each must be at least 1."""
    words = str(text).split(",")
    try:
        counts = [int(word) for word in words]
    except ValueError:
        raise UserError(
            f"--patients takes a number, not {text!r}", "e.g. --patients 400 (or 200,120,80 with --sites 3)"
        ) from None
    for count in counts:
        if count < 1:
            raise UserError(
                f"--patients must be at least 1, not {count}", "ask for one patient or more, e.g. --patients 400"
            )
    if len(counts) == 1:
        return counts[0]
    if sites is None or len(counts) != sites:
        raise UserError(
            f"--patients gives {len(counts)} counts for {sites or 'no'} sites", "give one count, or one per --sites"
        )
    return counts


def site_numbers(flag: str, values: list[str] | None) -> list[int]:
    """A repeatable option of site numbers, each a number or a comma list: ['1', '2,3']."""
    numbers = []
    for word in ",".join(values or []).split(","):
        if word.strip():
            try:
                numbers.append(int(word))
            except ValueError:
                raise UserError(f"{flag} takes site numbers, not {word!r}", f"e.g. {flag} 2 or {flag} 2,3") from None
    return numbers
