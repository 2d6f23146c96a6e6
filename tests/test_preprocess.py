"""Preprocessing: DICOM frames as the pretraining export made them, and model inputs.

Every DICOM case starts from a real file shipped in the pydicom wheel (some with tags
rewritten by pydicom) and is compared, bit for bit, with a straightforward re-implementation
of the pretraining steps written here from the facts file, independent of rnet_hub.
The faithful resize chain is compared with a plain PIL + OpenCV implementation, and the
default transform with timm's own eval transform.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from timm.data import create_transform as timm_create_transform
from timm.data import resolve_data_config

from rnet_hub.architectures import find_arch
from rnet_hub.folder import pretrained_cfg
from rnet_hub.preprocess import create_transform, is_dicom, load_dicom, load_frames, resolve_input_config

#: the module's shared fixtures run once: its tests share one worker under pytest-xdist (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("preprocess")

# ---------------------------------------------------------------------------------------
# The reference: the pretraining export, written out plainly (facts file, step 1)
# ---------------------------------------------------------------------------------------


def ref_export(pixels, center, width, rescale=None, invert=False):
    """Modality LUT, linear window, optional CR inversion, uint8 truncation (tag values read with float())."""
    center, width = float(center), float(width)
    values = pixels if rescale is None else pixels * float(rescale[0]) + float(rescale[1])
    windowed = np.where(values <= center - width / 2, 0.0,
                        np.where(values > center + width / 2, 255.0, (values - center + width / 2) / width * 255))
    if invert:
        if rescale is None:  # integer pixels were windowed in place: already truncated
            windowed = windowed.astype(np.int64)
        windowed = 255 - windowed
    return windowed.astype(np.uint8)


def ref_percentile(values):
    """The documented best-effort rule: export window from the 0.5th to the 99.5th percentile."""
    lo, hi = np.percentile(values.astype(np.float64), [0.5, 99.5])
    return ref_export(values.astype(np.float64), (lo + hi) / 2, hi - lo)


def read(name):
    return pydicom.dcmread(get_testdata_file(name))


# ---------------------------------------------------------------------------------------
# Export rules on real files
# ---------------------------------------------------------------------------------------


def test_mr_small_uses_its_window_exactly():
    ds = read("MR_small.dcm")
    (frame,) = load_dicom(get_testdata_file("MR_small.dcm"))
    assert frame.rule == "export" and frame.faithful
    assert frame.window == (600.0, 1600.0)
    assert frame.sop_instance_uid == ds.SOPInstanceUID and frame.frame == 0 and frame.modality == "MR"
    np.testing.assert_array_equal(frame.pixels, ref_export(ds.pixel_array, 600.0, 1600.0))
    assert frame.pixels.dtype == np.uint8 and len(np.unique(frame.pixels)) > 50


def test_rle_compressed_mr_decodes_to_the_same_frame():
    (frame,) = load_dicom(get_testdata_file("MR_small_RLE.dcm"))
    np.testing.assert_array_equal(frame.pixels, ref_export(read("MR_small.dcm").pixel_array, 600.0, 1600.0))
    assert frame.faithful


def test_ct_small_rescale_with_a_window():
    ds = read("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 40, 400
    (frame,) = load_dicom(ds)
    expected = ref_export(ds.pixel_array, 40.0, 400.0, rescale=(1.0, -1024.0))
    np.testing.assert_array_equal(frame.pixels, expected)
    assert frame.faithful
    # the rescale matters: without it every CT_small pixel (>= 128 stored) would be white
    assert (expected < 255).mean() > 0.1


def test_ct_small_without_a_window_is_best_effort_on_rescaled_values():
    ds = read("CT_small.dcm")
    (frame,) = load_dicom(get_testdata_file("CT_small.dcm"))
    assert frame.rule == "percentile" and not frame.faithful and "skipped" in frame.note
    np.testing.assert_array_equal(frame.pixels, ref_percentile(ds.pixel_array * 1.0 - 1024.0))


def test_ct_one_frame_per_window_when_explained():
    ds = read("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = [40, 300], [400, 1500]
    ds.WindowCenterWidthExplanation = ["SOFT", "BONE"]
    frames = load_dicom(ds)
    assert [f.window for f in frames] == [(40.0, 400.0), (300.0, 1500.0)]
    assert all(f.faithful and f.frame == 0 for f in frames)
    for frame, (center, width) in zip(frames, [(40, 400), (300, 1500)], strict=True):
        np.testing.assert_array_equal(frame.pixels, ref_export(ds.pixel_array, center, width, rescale=(1, -1024)))


def test_ct_several_windows_without_explanation_was_skipped_by_the_export():
    ds = read("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = [40, 300], [400, 1500]
    (frame,) = load_dicom(ds)
    assert frame.rule == "window" and "WindowCenterWidthExplanation" in frame.note
    np.testing.assert_array_equal(frame.pixels, ref_export(ds.pixel_array, 40, 400, rescale=(1, -1024)))


def test_mr_with_two_windows_uses_the_first_best_effort():
    ds = read("examples_overlay.dcm")  # real MR listing two windows: the single-window export skipped it
    (frame,) = load_dicom(get_testdata_file("examples_overlay.dcm"))
    assert frame.rule == "window" and not frame.faithful and frame.window == (450.0, 790.0)
    np.testing.assert_array_equal(frame.pixels, ref_export(ds.pixel_array, 450.0, 790.0))


def test_missing_window_falls_back_to_percentiles():
    ds = read("MR_small.dcm")
    del ds.WindowCenter, ds.WindowWidth
    (frame,) = load_dicom(ds)
    assert frame.rule == "percentile" and not frame.faithful
    np.testing.assert_array_equal(frame.pixels, ref_percentile(ds.pixel_array))


# ---------------------------------------------------------------------------------------
# Inversion: CR rule (export) and MONOCHROME1 (best effort)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "inverted"), [(None, True), ("INVERSE", True), ("IDENTITY", False)])
def test_cr_inversion_follows_presentation_lut_shape(shape, inverted):
    ds = read("MR_small.dcm")
    ds.Modality, ds.PhotometricInterpretation = "CR", "MONOCHROME2"
    if shape is not None:
        ds.PresentationLUTShape = shape
    (frame,) = load_dicom(ds)
    assert frame.faithful
    np.testing.assert_array_equal(frame.pixels, ref_export(ds.pixel_array, 600.0, 1600.0, invert=inverted))


def test_cr_inversion_happens_before_truncation_with_a_rescale():
    ds = read("MR_small.dcm")
    ds.Modality, ds.RescaleSlope, ds.RescaleIntercept = "CR", 1, 0
    (frame,) = load_dicom(ds)
    expected = ref_export(ds.pixel_array, 600.0, 1600.0, rescale=(1.0, 0.0), invert=True)
    np.testing.assert_array_equal(frame.pixels, expected)
    # and that differs from inverting the truncated image wherever the window value is fractional
    assert (expected != 255 - ref_export(ds.pixel_array, 600.0, 1600.0)).any()


def test_cr_ignores_monochrome1_but_best_effort_shows_bone_bright():
    ds = read("MR_small.dcm")
    ds.Modality, ds.PhotometricInterpretation, ds.PresentationLUTShape = "CR", "MONOCHROME1", "IDENTITY"
    (frame,) = load_dicom(ds)
    np.testing.assert_array_equal(frame.pixels, ref_export(ds.pixel_array, 600.0, 1600.0))

    ds.Modality = "DX"  # not exported in pretraining: best effort, MONOCHROME1 inverted
    (frame,) = load_dicom(ds)
    assert frame.rule == "window" and "DX" in frame.note
    np.testing.assert_array_equal(frame.pixels, 255 - ref_export(ds.pixel_array, 600.0, 1600.0))


# ---------------------------------------------------------------------------------------
# Multi-frame
# ---------------------------------------------------------------------------------------


def test_multi_frame_outside_the_export_is_split_with_per_frame_percentiles():
    ds = read("rtdose.dcm")
    frames = load_dicom(get_testdata_file("rtdose.dcm"))
    assert [f.frame for f in frames] == list(range(15))
    assert {f.rule for f in frames} == {"percentile"}
    for frame, pixels in zip(frames, ds.pixel_array, strict=True):
        np.testing.assert_array_equal(frame.pixels, ref_percentile(pixels))


def _with_functional_groups(ds, windows, rescales):
    items = []
    for window, rescale in zip(windows, rescales, strict=True):
        group = Dataset()
        if window is not None:
            voi = Dataset()
            voi.WindowCenter, voi.WindowWidth = window
            group.FrameVOILUTSequence = Sequence([voi])
        if rescale is not None:
            pvt = Dataset()
            pvt.RescaleSlope, pvt.RescaleIntercept = rescale
            group.PixelValueTransformationSequence = Sequence([pvt])
        items.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    return ds


def test_multi_frame_mr_takes_per_frame_windows_and_rescales():
    ds = read("rtdose.dcm")
    ds.Modality = "MR"
    windows = [(500_000 + 1000 * i, 100_000 + 5000 * i) for i in range(15)]
    rescales = [(0.5, 1000 * i) for i in range(15)]
    windows[3] = None  # no per-frame window: the export skipped this frame
    _with_functional_groups(ds, windows, rescales)
    frames = load_dicom(ds)
    assert len(frames) == 15
    for i, (frame, pixels) in enumerate(zip(frames, ds.pixel_array, strict=True)):
        if i == 3:
            assert frame.rule == "percentile" and "per-frame window" in frame.note
            np.testing.assert_array_equal(frame.pixels, ref_percentile(pixels * 0.5 + 3000))
            continue
        assert frame.faithful and frame.window == windows[i]
        np.testing.assert_array_equal(frame.pixels, ref_export(pixels, *windows[i], rescale=rescales[i]))


def test_multi_frame_nm_uses_the_top_level_window_without_functional_groups():
    ds = read("rtdose.dcm")
    ds.Modality, ds.WindowCenter, ds.WindowWidth = "NM", 1_000_000, 200_000
    frames = load_dicom(ds)
    assert len(frames) == 15 and all(f.faithful for f in frames)
    for frame, pixels in zip(frames, ds.pixel_array, strict=True):
        np.testing.assert_array_equal(frame.pixels, ref_export(pixels, 1_000_000, 200_000))


def test_multi_frame_xa_writes_one_image_per_frame_and_window():
    ds = read("rtdose.dcm")
    ds.Modality, ds.WindowCenter, ds.WindowWidth = "XA", [1_000_000, 900_000], [200_000, 400_000]
    frames = load_dicom(ds)
    assert [(f.frame, f.window) for f in frames[:3]] == [
        (0, (1_000_000.0, 200_000.0)), (0, (900_000.0, 400_000.0)), (1, (1_000_000.0, 200_000.0))]
    assert len(frames) == 30
    assert [f.rule for f in frames[:2]] == ["export", "window"]  # see the module docstring: an export slip
    for frame in frames:
        pixels = ds.pixel_array[frame.frame]
        np.testing.assert_array_equal(frame.pixels, ref_export(pixels, *frame.window))


# ---------------------------------------------------------------------------------------
# VOI LUT, codecs, odd files
# ---------------------------------------------------------------------------------------


def test_voi_lut_sequence_is_applied_and_scaled_to_its_range():
    ds = read("MR_small.dcm")
    ds.Modality = "OT"
    table = np.clip((np.arange(2048) - 200) * 2, 0, 4000).astype(np.uint16)  # 12-bit values in a 16-bit LUT
    item = Dataset()
    item.LUTDescriptor = [2048, 0, 16]
    item.LUTData = table.tolist()
    ds.VOILUTSequence = Sequence([item])
    (frame,) = load_dicom(ds)
    assert frame.rule == "voi-lut"
    looked_up = table[np.clip(ds.pixel_array, 0, 2047)].astype(np.float64)
    expected = np.rint(looked_up / table.max() * 255).astype(np.uint8)  # the LUT spans 0..3694
    np.testing.assert_array_equal(frame.pixels, expected)


def test_jpeg2000_ct_when_a_decoder_is_installed():
    ds = read("693_J2KI.dcm")
    if get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
        (frame,) = load_dicom(get_testdata_file("693_J2KI.dcm"))
        assert frame.faithful and frame.window == (40.0, 100.0)
        np.testing.assert_array_equal(frame.pixels, ref_export(ds.pixel_array, 40.0, 100.0, rescale=(1.0, -1024.0)))
    else:
        with pytest.raises(ImportError, match=r"rnet-hub\[dicom-codecs\]"):
            load_dicom(get_testdata_file("693_J2KI.dcm"))


def test_missing_codec_names_the_extra():
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    if get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).is_available:
        (frame,) = load_dicom(path)
        np.testing.assert_array_equal(frame.pixels, ref_export(read("MR_small.dcm").pixel_array, 600.0, 1600.0))
    else:
        with pytest.raises(ImportError, match=r"JPEG-LS.*pip install \"rnet-hub\[dicom-codecs\]\""):
            load_dicom(path)


def test_missing_pydicom_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"rnet-hub\[dicom\]"):
        load_dicom(get_testdata_file("MR_small.dcm"))


def test_non_image_dicom_is_refused():
    with pytest.raises(ValueError, match="no pixel data"):
        load_dicom(get_testdata_file("rtplan.dcm"))


def test_colour_dicom_is_kept_as_rgb():
    (frame,) = load_dicom(get_testdata_file("SC_rgb_rle.dcm"))
    assert frame.rule == "rgb" and frame.pixels.shape == (100, 100, 3)
    np.testing.assert_array_equal(frame.pixels, read("SC_rgb_rle.dcm").pixel_array)


def test_load_frames_recognises_dicom_by_header_and_headerless(tmp_path):
    ds = read("MR_small.dcm")
    named_png = tmp_path / "scan.png"  # a DICOM file with a misleading name
    ds.save_as(named_png, enforce_file_format=True)
    assert is_dicom(named_png)
    assert load_frames(named_png)[0].faithful
    headerless = tmp_path / "raw"
    ds.preamble = None
    pydicom.dcmwrite(headerless, ds, enforce_file_format=False)
    assert not is_dicom(headerless)
    np.testing.assert_array_equal(load_frames(headerless)[0].pixels, load_frames(named_png)[0].pixels)
    png = tmp_path / "image.dcm"  # a PNG file with a misleading name
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(png, format="PNG")
    (frame,) = load_frames(png)
    assert frame.rule == "image" and frame.pixels.shape == (4, 5)
    (tmp_path / "junk").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="neither an image PIL can read nor a DICOM file"):
        load_frames(tmp_path / "junk")


# ---------------------------------------------------------------------------------------
# Model inputs
# ---------------------------------------------------------------------------------------

RNET_224 = pretrained_cfg(find_arch("ResNet18"), num_classes=36)
RNET_300 = pretrained_cfg(find_arch("EfficientNetB3"), num_classes=36)
IMAGENET_LIKE = {**RNET_224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_mode": "center",
                 "crop_pct": 0.875}


def timm_eval(cfg):
    return timm_create_transform(**resolve_data_config(pretrained_cfg=cfg))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return {"rgb": rng.integers(0, 256, (173, 301, 3), dtype=np.uint8),
            "grey": rng.integers(0, 256, (260, 120), dtype=np.uint8)}


@pytest.mark.parametrize("cfg", [RNET_224, RNET_300, IMAGENET_LIKE], ids=["rnet224", "rnet300", "imagenet"])
def test_rgb_input_equals_timms_eval_transform(cfg, images):
    expected = timm_eval(cfg)(Image.fromarray(images["rgb"]))
    ours = create_transform(cfg)
    for form in (Image.fromarray(images["rgb"]), images["rgb"], torch.from_numpy(images["rgb"]).permute(2, 0, 1)):
        out = ours(form)
        assert out.shape == expected.shape and out.dtype == torch.float32
        assert (out - expected).abs().max() <= 1 / 255


@pytest.mark.parametrize("cfg", [RNET_300, IMAGENET_LIKE], ids=["rnet300", "imagenet"])
def test_grey_input_needs_no_convert_rgb(cfg, images):
    expected = timm_eval(cfg)(Image.fromarray(images["grey"]).convert("RGB"))
    out = create_transform(cfg)(Image.fromarray(images["grey"]))
    assert out.shape == (3, *cfg["input_size"][1:])
    assert (out - expected).abs().max() <= 1 / 255


def test_rnet_input_is_letterboxed_zero_padded_and_unnormalised(images):
    out = create_transform(RNET_224)(images["grey"])  # 260 x 120: tall, padded left and right
    assert out.shape == (3, 224, 224)
    assert out[:, :, :50].abs().max() == 0 and out[:, :, -50:].abs().max() == 0
    assert 0.4 < out[:, :, 80:140].mean() < 0.6 and out.max() <= 1


def test_transform_reads_a_model_its_folder_and_its_config(converted_dir, images):
    from rnet_hub.folder import read_config
    from rnet_hub.loading import load_timm_from_dir

    folder = converted_dir("ResNet18")
    model = load_timm_from_dir(folder)
    model.pretrained_cfg = read_config(folder)["pretrained_cfg"]
    expected = create_transform(RNET_224)(images["rgb"])
    for source in (folder, str(folder), read_config(folder), model):
        assert torch.equal(create_transform(source)(images["rgb"]), expected)
    assert resolve_input_config(folder)["mean"] == [0.0, 0.0, 0.0]


def test_sixteen_bit_png_keeps_its_precision(tmp_path, images):
    grey16 = np.minimum(images["grey"].astype(np.uint32) * 257 + 100, 65535).astype(np.uint16)  # between levels
    path = tmp_path / "deep.png"
    Image.fromarray(grey16).save(path)
    assert Image.open(path).mode.startswith("I")
    out = create_transform(RNET_300)(path)
    eight_bit = timm_eval(RNET_300)(Image.fromarray(images["grey"]).convert("RGB"))
    # close to the 8-bit image (PIL's 8-bit resampling is fixed-point and rounds: up to ~1 level apart) ...
    assert (out - eight_bit).abs().max() <= 2 / 255
    # ... and exactly timm's geometry applied to the 16-bit values as floats (PIL mode F)
    plane = Image.fromarray(grey16.astype(np.float32) / 65535, mode="F")
    box = timm_create_transform(**{**resolve_data_config(pretrained_cfg=RNET_300), "input_size": (1, 300, 300),
                                   "mean": (0.0,), "std": (1.0,)}, normalize=False)
    torch.testing.assert_close(out[0], box(plane)[0], atol=1e-6, rtol=0)


def test_in_chans_1_model_gets_one_grey_channel(images):
    cfg = {**RNET_224, "input_size": [1, 224, 224], "mean": [0.0], "std": [1.0]}
    out = create_transform(cfg)(images["rgb"])
    expected = timm_eval({**cfg, "input_size": [1, 224, 224]})(Image.fromarray(images["rgb"]).convert("L"))
    assert out.shape == (1, 224, 224)
    assert (out - expected).abs().max() <= 1 / 255


def test_frames_paths_and_float_tensors(images):
    transform = create_transform(RNET_224)
    (frame,) = load_dicom(get_testdata_file("MR_small.dcm"))
    assert torch.equal(transform(frame), transform(frame.pixels))
    assert torch.equal(transform(get_testdata_file("MR_small.dcm")), transform(frame.pixels))
    as_float = torch.from_numpy(images["grey"]).float() / 255
    assert (transform(as_float) - transform(images["grey"])).abs().max() <= 1 / 255


def test_bad_inputs_say_what_to_do():
    transform = create_transform(RNET_224)
    with pytest.raises(ValueError, match="unsupported pixel type int16"):
        transform(np.zeros((8, 8), np.int16))
    with pytest.raises(ValueError, match=r"float images must hold values in \[0, 1\]"):
        transform(np.full((8, 8), 3.0))
    with pytest.raises(ValueError, match="holds 15 images"):
        transform(get_testdata_file("rtdose.dcm"))


# ---------------------------------------------------------------------------------------
# The faithful chain: PIL letterbox to 224, then OpenCV letterbox to the native size
# ---------------------------------------------------------------------------------------


def ref_faithful(grey, size):
    """Facts file steps 2-4, written out with PIL and OpenCV."""
    h, w = grey.shape
    if h > w:
        nh, nw = 224, round(224 / (h / w))
    else:
        nh, nw = round(224 * (h / w)), 224
    canvas = Image.new("L", (224, 224))
    canvas.paste(Image.fromarray(grey).resize((nw, nh), Image.BILINEAR), ((224 - nw) // 2, (224 - nh) // 2))
    stage = np.array(canvas)
    r = float(size) / 224
    nh, nw = int(224 * r), int(224 * r)
    resized = cv2.resize(stage, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dh, dw = size - nh, size - nw
    out = cv2.copyMakeBorder(resized, dh // 2, dh - dh // 2, dw // 2, dw - dw // 2, cv2.BORDER_CONSTANT, value=0)
    return np.repeat(out[None].astype(np.float32) / 255, 3, axis=0)


@pytest.mark.parametrize("name", ["ResNet18", "EfficientNetB3", "EfficientNetB4", "InceptionV3"])
@pytest.mark.parametrize("shape", [(512, 512), (300, 97), (61, 640)])
def test_faithful_chain_matches_pil_then_opencv(name, shape):
    spec = find_arch(name)
    grey = np.random.default_rng(shape[0]).integers(0, 256, shape, dtype=np.uint8)
    out = create_transform(pretrained_cfg(spec, num_classes=36), faithful=True)(grey)
    np.testing.assert_array_equal(out.numpy(), ref_faithful(grey, spec.input_size))


def test_faithful_differs_from_default_above_224(images):
    faithful = create_transform(RNET_300, faithful=True)(images["grey"])
    default = create_transform(RNET_300)(images["grey"])
    assert faithful.shape == default.shape
    assert (faithful - default).abs().max() > 0.05  # 224-detail upscaled vs resampled from the source


def test_faithful_needs_opencv_only_above_224(monkeypatch, images):
    monkeypatch.setitem(sys.modules, "cv2", None)
    assert create_transform(RNET_224, faithful=True)(images["grey"]).shape == (3, 224, 224)
    with pytest.raises(ImportError, match=r"rnet-hub\[faithful\]"):
        create_transform(RNET_300, faithful=True)(images["grey"])
