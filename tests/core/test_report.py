"""Heatmap PNGs: one per chosen test image plus a grid, readable by any PNG decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import DataBundle, load_dataset
from core.models import build_model, set_input_normalisation
from core.publish.heatmaps import (
    CAPTION_PX, FRAME_PX, GRID_COLUMNS, GRID_GAP_PX, MIN_PANEL_PX, PANEL_GAP_PX, WRONG_RGB, colormap,
    misclassified_first, render_gallery, render_heatmaps,
)
from core.spec import DatasetSpec

torch.set_num_threads(1)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset(DatasetSpec(name="digits", image_size=16), seed=0)


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return build_model("cnn", 10, 1), build_model("resnet8", 10, 1)  # student, teacher


def test_render_writes_one_png_per_image_and_a_grid(digits: DataBundle, models, tmp_path: Path) -> None:
    student, teacher = models
    paths = render_heatmaps(student, teacher, digits, tmp_path, 5, CPU)

    folder = tmp_path / "heatmaps"
    assert paths == [folder / f"{i:04d}.png" for i in range(5)] + [folder / "grid.png"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)

    scale = 8  # 16 px images are upscaled by the smallest whole factor reaching MIN_PANEL_PX
    assert 16 * scale >= MIN_PANEL_PX > 16 * (scale - 1)
    row_width = 3 * 16 * scale + 2 * PANEL_GAP_PX  # input | teacher | student
    row_height = 16 * scale + CAPTION_PX
    for path in paths[:-1]:
        with Image.open(path) as image:
            image.load()
            assert image.format == "PNG" and image.mode == "RGB"
            assert image.size == (row_width, row_height)
    cell_w, cell_h = row_width + 2 * FRAME_PX, row_height + 2 * FRAME_PX
    with Image.open(paths[-1]) as grid:  # 5 tiles in GRID_COLUMNS (4) columns: two lines
        assert GRID_COLUMNS == 4
        assert grid.size == (4 * cell_w + 3 * GRID_GAP_PX, 2 * cell_h + GRID_GAP_PX)


def test_gallery_records_classes_and_cosines_and_the_grid_shows_mistakes_first(
    digits: DataBundle, models, tmp_path: Path
) -> None:
    student, teacher = models  # untrained: the student gets most images wrong
    tiles = render_gallery(student, teacher, digits, tmp_path, 6, CPU)
    assert [tile.file for tile in tiles] == [f"heatmaps/{i:04d}.png" for i in range(6)]
    assert all(tile.true in digits.class_names and -1.0 <= tile.cosine <= 1.0 for tile in tiles)
    assert [tile.index for tile in tiles] == sorted(tile.index for tile in tiles)
    order = misclassified_first(tiles)
    flags = [tiles[i].misclassified for i in order]
    assert flags == sorted(flags, reverse=True) and any(flags)
    # The first grid cell is framed in red exactly when the student got that tile wrong.
    with Image.open(tmp_path / "heatmaps" / "grid.png") as grid:
        corner = grid.convert("RGB").getpixel((0, 0))
    assert (corner == WRONG_RGB) == flags[0]


def test_first_panel_shows_the_denormalised_input_in_gray(digits: DataBundle, models, tmp_path: Path) -> None:
    student, teacher = models
    first = render_heatmaps(student, teacher, digits, tmp_path, 1, CPU)[0]
    pixels = np.asarray(Image.open(first))
    expected = np.round(digits.denormalise(digits.test_x[:1])[0, 0].numpy() * 255.0).astype(np.uint8)
    panel = pixels[: 16 * 8 : 8, : 16 * 8 : 8]  # one pixel per upscaled 8x8 block
    assert (panel[..., 0] == panel[..., 1]).all() and (panel[..., 1] == panel[..., 2]).all()
    assert np.abs(panel[..., 0].astype(int) - expected.astype(int)).max() <= 1


def test_images_are_evenly_spaced_and_the_same_on_every_run(digits: DataBundle, models, tmp_path: Path) -> None:
    student, teacher = models
    first = render_heatmaps(student, teacher, digits, tmp_path / "a", 3, CPU)
    second = render_heatmaps(student, teacher, digits, tmp_path / "b", 3, CPU)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    # The second row's input is test image n // 3, not image 1.
    n = len(digits.test_y)
    pixels = np.asarray(Image.open(first[1]))[: 16 * 8 : 8, : 16 * 8 : 8, 0]
    expected = np.round(digits.denormalise(digits.test_x[n // 3 : n // 3 + 1])[0, 0].numpy() * 255.0)
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1


def test_zero_heatmaps_writes_nothing(digits: DataBundle, models, tmp_path: Path) -> None:
    student, teacher = models
    assert render_heatmaps(student, teacher, digits, tmp_path, 0, CPU) == []
    assert not (tmp_path / "heatmaps").exists()


def test_colormap_runs_from_dark_purple_to_yellow_with_rising_lightness() -> None:
    colours = colormap(np.linspace(0.0, 1.0, 11))
    assert colours.shape == (11, 3)
    assert np.allclose(colours[0], (0.2670, 0.0049, 0.3294)) and np.allclose(colours[-1], (0.9932, 0.9062, 0.1439))
    luminance = colours @ np.array([0.2126, 0.7152, 0.0722])
    assert (np.diff(luminance) > 0).all()  # perceptual order: brighter means more attribution
    assert np.allclose(colormap(np.array([-1.0, 2.0])), colours[[0, -1]])


def test_colour_32px_images_are_upscaled_4x_and_count_is_capped_by_the_test_set(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    data = DataBundle.from_tensors(
        train_x=torch.randn(4, 3, 32, 32, generator=generator),
        train_y=torch.tensor([0, 1, 0, 1]),
        test_x=torch.randn(3, 3, 32, 32, generator=generator),
        test_y=torch.tensor([0, 1, 1]),
        class_names=["an airplane with a long name", "ship"],
        mean=[0.5, 0.4, 0.3],
        std=[0.2, 0.2, 0.2],
    )
    torch.manual_seed(0)
    student, teacher = build_model("cnn", 2, 3), build_model("resnet8", 2, 3)
    paths = render_heatmaps(student, teacher, data, tmp_path, 10, CPU)
    assert len(paths) == 3 + 1
    with Image.open(paths[0]) as image:
        assert image.size == (3 * 128 + 2 * PANEL_GAP_PX, 128 + CAPTION_PX)
        pixels = np.asarray(image)
    expected = np.round(data.denormalise(data.test_x[:1])[0].permute(1, 2, 0).numpy() * 255.0)
    assert np.abs(pixels[:128:4, :128:4].astype(int) - expected.astype(int)).max() <= 1


def test_gradcam_job_keeps_its_three_panel_layout_and_says_so_in_the_png(
    digits: DataBundle, models, tmp_path: Path
) -> None:
    student, teacher = models
    tiles = render_gallery(student, teacher, digits, tmp_path, 2, CPU, explainer="gradcam")

    with Image.open(tmp_path / tiles[0].file) as image:
        assert image.size == (3 * 128 + 2 * PANEL_GAP_PX, 128 + CAPTION_PX)  # input | teacher | student, one line
        text = dict(image.text)
    assert text["explainer"] == "captum LayerGradCam, teacher top-1 class"
    assert text["panels"] == "input | teacher Grad-CAM | student Grad-CAM"
    assert "comparison" not in text
    assert tiles[0].cosines == {"gradcam": tiles[0].cosine}


@pytest.fixture(scope="module")
def bcos_models(digits: DataBundle) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    student = build_model("bcos/cifar10_resnet8", 10, 1)
    teacher = build_model("bcos/cifar10_resnet8", 10, 1)
    for model in (student, teacher):
        set_input_normalisation(model, digits.mean, digits.std)
    return student, teacher


def test_bcos_job_shows_its_bcos_maps_then_gradcam_and_names_both(
    digits: DataBundle, bcos_models, tmp_path: Path
) -> None:
    student, teacher = bcos_models
    tiles = render_gallery(student, teacher, digits, tmp_path, 3, CPU, explainer="bcos")

    five_panels = 5 * 128 + 4 * PANEL_GAP_PX  # input | teacher B-cos | student B-cos | teacher/student Grad-CAM
    for tile in tiles:
        with Image.open(tmp_path / tile.file) as image:
            assert image.size == (five_panels, 128 + 2 * CAPTION_PX)  # a title line above the classes
            text = dict(image.text)
        assert set(tile.cosines) == {"bcos", "gradcam"} and tile.cosine == tile.cosines["bcos"]
    assert text["explainers"] == "bcos, gradcam"
    assert text["panels"] == "input | teacher B-cos | student B-cos | teacher Grad-CAM | student Grad-CAM"
    assert "B-cos input encoder" in text["explainer"] and "LayerGradCam" in text["comparison"]
    with Image.open(tmp_path / "heatmaps" / "grid.png") as grid:
        assert grid.size[0] == 3 * (five_panels + 2 * FRAME_PX) + 2 * GRID_GAP_PX
        assert dict(grid.text)["explainers"] == "bcos, gradcam"
    # The B-cos panels are not the Grad-CAM ones drawn twice: the teacher's two map panels differ.
    with Image.open(tmp_path / tiles[0].file) as image:
        pixels = np.asarray(image).astype(int)
    step = 128 + PANEL_GAP_PX
    bcos_panel, gradcam_panel = pixels[:128, step : step + 128], pixels[:128, 3 * step : 3 * step + 128]
    assert np.abs(bcos_panel - gradcam_panel).max() > 10


def test_report_page_and_model_card_name_the_jobs_explainer(
    digits: DataBundle, bcos_models, tmp_path: Path
) -> None:
    from core.publish.model_card import write_model_card
    from core.publish.report_page import write_report

    student, teacher = bcos_models
    tiles = render_gallery(student, teacher, digits, tmp_path, 2, CPU, explainer="bcos")
    result = {"explainer": "bcos", "explanation_cosine": 0.5, "explanation_cosine_gradcam": 0.25,
              "gallery": [tile.as_dict() for tile in tiles], "spec": {"name": "b"}}

    page = write_report(tmp_path, result).read_text()
    assert "explanation cosine (B-cos, mean)" in page and "explanation cosine (Grad-CAM, mean)" in page
    assert "Input | teacher B-cos | student B-cos | teacher Grad-CAM | student Grad-CAM" in page
    assert f"B-cos cosine {tiles[0].cosines['bcos']:.2f}" in page
    card = write_model_card(tmp_path, result).read_text()
    assert "| explanation cosine (B-cos) |  | 0.500 |" in card
    assert "| explanation cosine (Grad-CAM) |  | 0.250 |" in card
    assert "same evidence (B-cos)" in card
