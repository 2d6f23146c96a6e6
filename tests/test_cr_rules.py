"""CR inversion as the pretraining exporter *wrote* it, the intended inversion as an option, and its drop rules.

Every case is a pydicom test file (MR_small.dcm, relabelled CR, with PixelRepresentation,
rescale tags, window and PresentationLUTShape rewritten and saved to disk), compared with the
exporter's arithmetic written out here with its own numpy dtypes (facts file, "Preprocessing
used in pretraining", CR): ``np.piecewise`` into the pixel array's dtype, ``np.abs(v - 255)``
on that array, ``np.uint8`` at the end.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from rnet_hub.errors import BadInputError
from rnet_hub.preprocess import export_drop_reason, load_dicom, load_frames

WINDOW = (700.0, 1000.0)  # MR_small spans 127..2145: about a tenth of the pixels at or below 200, a tenth above 1200
ABSENT = object()


def cr_file(tmp_path, *, signed=False, slope=None, intercept=None, shape=ABSENT, window=WINDOW, name="cr.dcm"):
    """MR_small as a CR file: (path, the dataset read back from it)."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Modality, ds.PhotometricInterpretation = "CR", "MONOCHROME2"
    ds.PixelRepresentation = 1 if signed else 0  # MR_small is int16 and never negative: same bytes as uint16
    ds.WindowCenter, ds.WindowWidth = window
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if shape is not ABSENT:
        ds.PresentationLUTShape = shape
    path = tmp_path / name
    ds.save_as(path)
    back = pydicom.dcmread(path)
    assert back.pixel_array.dtype == (np.int16 if signed else np.uint16)
    return path, back


def exporter(ds):
    """The exporter's CR steps with its dtypes: (array before the uint8 cast, image written)."""
    try:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    except AttributeError:
        slope, intercept = 1, 0  # Python ints: integer pixels keep their dtype
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    image = ds.pixel_array * slope + intercept
    image = np.piecewise(image, [image <= center - width / 2, image > center + width / 2],
                         [0, 255, lambda x: (x - center + width / 2) / width * 255])
    if "PresentationLUTShape" not in ds or ds.PresentationLUTShape == "INVERSE":
        image = np.abs(image - 255)
    return image, np.uint8(image)


def window_output(ds):
    """v: the linear window on the modality values, in float64, not truncated."""
    values = ds.pixel_array.astype(np.float64)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        values = values * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    return np.clip((values - center + width / 2) / width * 255, 0, 255)


def only(frames):
    (frame,) = frames
    assert frame.rule == "export" and frame.modality == "CR" and frame.pixels.dtype == np.uint8
    return frame


def values_near_0_and_255(v):
    assert (v == 0).mean() > 0.02 and (v == 255).mean() > 0.02 and ((v > 250) & (v < 255)).any()
    assert (v != np.floor(v)).mean() > 0.5  # mostly fractional: floor(255 - v) differs from 255 - floor(v)


# ---------------------------------------------------------------------------------------
# What the exporter wrote (the default)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [ABSENT, "INVERSE"], ids=["absent", "INVERSE"])
def test_unsigned_without_rescale_wraps_and_is_not_inverted(tmp_path, shape):
    path, ds = cr_file(tmp_path, shape=shape)
    frame = only(load_dicom(path))
    np.testing.assert_array_equal(frame.pixels, exporter(ds)[1])
    v = window_output(ds)
    values_near_0_and_255(v)
    np.testing.assert_array_equal(frame.pixels, (np.floor(v).astype(np.int64) + 1) % 256)
    assert (frame.pixels[v == 255] == 0).all() and (frame.pixels[v == 0] == 1).all()
    assert frame.cr_rule == "written: (floor(v) + 1) mod 256 (unsigned, no rescale)" and frame.faithful


@pytest.mark.parametrize(("slope", "intercept"), [("1.5", None), (None, "-20")], ids=["slope-only", "intercept-only"])
def test_either_rescale_tag_absent_is_the_integer_path(tmp_path, slope, intercept):
    path, ds = cr_file(tmp_path, slope=slope, intercept=intercept)
    frame = only(load_dicom(path))
    np.testing.assert_array_equal(frame.pixels, exporter(ds)[1])
    np.testing.assert_array_equal(frame.pixels, (np.floor(window_output(ds)).astype(np.int64) + 1) % 256)
    assert frame.cr_rule.startswith("written: (floor(v) + 1) mod 256")


@pytest.mark.parametrize("shape", [ABSENT, "INVERSE"], ids=["absent", "INVERSE"])
def test_signed_without_rescale_is_inverted_after_truncation(tmp_path, shape):
    path, ds = cr_file(tmp_path, signed=True, shape=shape)
    frame = only(load_dicom(path))
    np.testing.assert_array_equal(frame.pixels, exporter(ds)[1])
    v = window_output(ds)
    values_near_0_and_255(v)
    np.testing.assert_array_equal(frame.pixels, 255 - np.floor(v))
    assert frame.cr_rule == "written: 255 - floor(v) (signed, no rescale)" and frame.faithful


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("shape", [ABSENT, "INVERSE"], ids=["absent", "INVERSE"])
def test_rescale_present_is_inverted_before_truncation(tmp_path, signed, shape):
    path, ds = cr_file(tmp_path, signed=signed, slope="1.25", intercept="-60", shape=shape)
    frame = only(load_dicom(path))
    np.testing.assert_array_equal(frame.pixels, exporter(ds)[1])
    v = window_output(ds)
    values_near_0_and_255(v)
    np.testing.assert_array_equal(frame.pixels, np.floor(255 - v))
    assert (frame.pixels != 255 - np.floor(v)).mean() > 0.5
    assert frame.cr_rule == "written: floor(255 - v) (rescale present)" and frame.faithful


@pytest.mark.parametrize("shape", ["IDENTITY", "OTHER", ""])
@pytest.mark.parametrize(("signed", "slope", "intercept"), [(False, None, None), (True, None, None),
                                                            (False, "1.25", "-60")],
                         ids=["unsigned", "signed", "rescale"])
def test_any_presentation_lut_shape_but_inverse_is_not_inverted(tmp_path, shape, signed, slope, intercept):
    path, ds = cr_file(tmp_path, signed=signed, slope=slope, intercept=intercept, shape=shape)
    frame = only(load_dicom(path))
    np.testing.assert_array_equal(frame.pixels, exporter(ds)[1])
    np.testing.assert_array_equal(frame.pixels, np.floor(window_output(ds)))
    assert frame.cr_rule == f"none (PresentationLUTShape {shape or 'empty'})" and frame.faithful
    assert load_dicom(path, cr_rule="intended")[0].cr_rule == frame.cr_rule  # nothing to invert either way


def test_photometric_interpretation_is_not_consulted(tmp_path):
    path, ds = cr_file(tmp_path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    np.testing.assert_array_equal(only(load_dicom(tmp_path / "mono1.dcm")).pixels, only(load_dicom(path)).pixels)


def test_other_modalities_have_no_cr_rule():
    (frame,) = load_dicom(get_testdata_file("MR_small.dcm"))
    assert frame.cr_rule is None and frame.dropped is None


# ---------------------------------------------------------------------------------------
# The intended inversion: only when asked for
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signed", "slope", "intercept"), [(False, None, None), (True, None, None),
                                                            (False, "1.25", "-60")],
                         ids=["unsigned", "signed", "rescale"])
def test_intended_inversion_is_an_explicit_option(tmp_path, signed, slope, intercept):
    path, ds = cr_file(tmp_path, signed=signed, slope=slope, intercept=intercept)
    frame = only(load_dicom(path, cr_rule="intended"))
    v = window_output(ds)
    expected = np.floor(255 - v) if slope else 255 - np.floor(v)
    np.testing.assert_array_equal(frame.pixels, expected)
    assert frame.cr_rule == "intended: 255 - v" and not frame.faithful
    written = only(load_dicom(path))
    assert (written.pixels == frame.pixels).all() == (signed or slope is not None)
    (through_frames,) = load_frames(path, cr_rule="intended")
    np.testing.assert_array_equal(through_frames.pixels, frame.pixels)
    assert through_frames.cr_rule == frame.cr_rule


def test_unknown_options_are_refused(tmp_path):
    path, _ = cr_file(tmp_path)
    for call in (lambda: load_dicom(path, cr_rule="inverted"), lambda: load_frames(path, cr_rule="nope"),
                 lambda: load_dicom(path, drop="yes"), lambda: load_frames(path, drop=True)):
        with pytest.raises(BadInputError, match="cr_rule|drop"):
            call()


# ---------------------------------------------------------------------------------------
# Drop rules
# ---------------------------------------------------------------------------------------


def ref_kept(array):
    """The exporter's shape and value policies (threshold 0.1), written out."""
    if min(array.shape) / max(array.shape) < 0.1:
        return False
    top = np.max(array)
    if top < 1 or int(np.log2(top)) + 1 < 7:
        return False
    bits = int(np.log2(top)) + 1
    hist, _ = np.histogram(np.ravel(array), bins=np.linspace(0, 2**bits - 1, 2**bits))
    return np.count_nonzero(hist) / (2**bits - 1) > 0.1


def mr_small_variant(tmp_path, name, *, pixels=None, window=None):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.astype(np.int16).tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.save_as(tmp_path / name)
    return tmp_path / name


def test_wide_and_short_image_is_reported_for_its_aspect_ratio(tmp_path):
    full = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    strip = mr_small_variant(tmp_path, "strip.dcm", pixels=np.tile(full[28:34], (1, 2)))  # 6 x 128
    (frame,) = load_dicom(strip, drop="report")
    assert frame.dropped == "aspect ratio below 0.1 (6 x 128)" and frame.faithful
    assert load_dicom(strip)[0].dropped is None  # default: not checked, every frame returned
    assert load_dicom(strip, drop="apply") == [] and load_frames(strip, drop="apply") == []
    assert load_frames(strip, drop="report")[0].dropped == frame.dropped


def test_constant_and_near_black_images_have_too_few_grey_levels(tmp_path):
    constant = mr_small_variant(tmp_path, "constant.dcm", pixels=np.full((64, 64), 1000))
    (frame,) = load_dicom(constant, drop="report")
    assert frame.dropped == "too few grey levels: 1 of 255 levels used (at most 10%)"
    dark = mr_small_variant(tmp_path, "dark.dcm", window=(5000, 8000))  # the brightest pixel ends at 36
    (frame,) = load_dicom(dark, drop="report")
    assert frame.dropped.startswith("too few grey levels: near black (maximum 36 below 64)")
    assert load_dicom(dark, drop="apply") == []
    (kept,) = load_dicom(get_testdata_file("MR_small.dcm"), drop="apply")
    assert kept.dropped is None


def test_grey_level_rule_counts_the_exporters_unit_bins():
    ramp = np.linspace(0, 250, 26).astype(np.uint8)
    for array, kept in [(np.tile(ramp, (30, 1)), True), (np.tile(ramp[1:], (30, 1)), False),  # 26 / 255 > 0.1
                        (np.tile(np.r_[np.arange(24), 254, 255].astype(np.uint8), (30, 1)), False),  # 254, 255 share
                        (np.tile(np.arange(100, dtype=np.uint8), (30, 1)), True),  # max 99: 7 bits, 100 of 127 bins
                        (np.tile(np.arange(0, 100, 8, dtype=np.uint8), (30, 1)), True),  # 13 of 127 > 0.1
                        (np.tile(np.arange(0, 96, 8, dtype=np.uint8), (30, 1)), False),  # 12 of 127
                        (np.zeros((30, 30), np.uint8), False), (np.full((30, 30), 63, np.uint8), False),
                        (np.tile(ramp, (26, 10)), True), (np.tile(ramp, (25, 10)), False)]:  # 26 x 260 vs 25 x 260
        assert ref_kept(array) == kept, array.shape
        assert (export_drop_reason(array) is None) == kept, array.shape


def test_unsigned_cr_whose_inversion_wrapped_was_dropped_by_the_exporter(tmp_path):
    path, ds = cr_file(tmp_path)
    array, written = exporter(ds)
    assert array.dtype == np.uint16 and array.max() > 65000 and not ref_kept(array)
    assert ref_kept(written)  # the wrapped 8-bit image alone would have passed
    for rule in ("written", "intended"):  # `dropped` is the exporter's verdict whatever the pixels returned
        (frame,) = load_dicom(path, cr_rule=rule, drop="report")
        assert frame.dropped.startswith("too few grey levels")
    for kwargs in ({"signed": True}, {"slope": "1.25", "intercept": "-60"}, {"shape": "IDENTITY"}):
        other, ds = cr_file(tmp_path, name="other.dcm", **kwargs)
        assert ref_kept(exporter(ds)[0])
        assert load_dicom(other, drop="report")[0].dropped is None


def test_multi_frame_mr_without_per_frame_rescale_was_dropped():
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    ds.Modality = "MR"
    items = []
    for _ in range(len(ds.pixel_array)):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = 1_000_000, 200_000
        group = Dataset()
        group.FrameVOILUTSequence = Sequence([voi])
        items.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    frames = load_dicom(ds, drop="report")
    assert len(frames) == 15 and {f.rule for f in frames} == {"window"}
    assert all(f.dropped == "too few grey levels: constant (the export used slope 0 here)" for f in frames)
    assert load_dicom(ds, drop="apply") == []
