"""Heatmap PNGs: the input, then teacher and student maps side by side, one tile per test image, and a grid.

The metrics say how far the explanations agree on average; these pictures let a
person see where and how they differ. The maps are those of the explainer the job
was taught with, then Grad-CAM beside them when that explainer is another one
(`core.explain.shown_explainers`): a Grad-CAM job's tile is
`input | teacher Grad-CAM | student Grad-CAM`, a B-cos job's is
`input | teacher B-cos | student B-cos | teacher Grad-CAM | student Grad-CAM`.
Maps come from captum (as for the metrics); the colormap is a viridis lookup table
interpolated in numpy, so no plotting library is needed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo
from torch import nn

from core.atomic import atomic_path
from core.explain.reference import captum_maps, map_cosine
from core.data import DataBundle
from core.models import predict_logits
from core.publish.manifest import HEATMAP_FOLDER, HEATMAP_GRID
from core.explain import get_explainer, shown_explainers
from core.models import explained_layer_path

log = logging.getLogger(__name__)

MIN_PANEL_PX = 128  # panels are upscaled by a whole factor until at least this wide: 32x32 -> 4x
PANEL_GAP_PX = 4  # white space between the panels of a tile
GRID_COLUMNS = 4  # tiles per line of grid.png
GRID_GAP_PX = 12  # white space between tiles of the grid
FRAME_PX = 3  # red frame around a tile the student got wrong (white otherwise)
CAPTION_PX = 18  # one line of text under the panels
HEAT_ALPHA = 0.5  # weight of the colormap in the overlay; the rest is the input image
TEXT_RGB = (20, 20, 20)
WRONG_RGB = (200, 30, 30)  # a teacher/student label that differs from the true one

# matplotlib's viridis (perceptually uniform, readable in grayscale and by colour-blind readers)
# sampled at 17 evenly spaced points; linear interpolation between them is visually identical.
_VIRIDIS = np.array(
    [
        (0.2670, 0.0049, 0.3294),
        (0.2823, 0.0950, 0.4173),
        (0.2788, 0.1755, 0.4834),
        (0.2590, 0.2515, 0.5247),
        (0.2297, 0.3224, 0.5457),
        (0.1994, 0.3876, 0.5546),
        (0.1727, 0.4488, 0.5579),
        (0.1490, 0.5081, 0.5573),
        (0.1276, 0.5669, 0.5506),
        (0.1201, 0.6222, 0.5349),
        (0.1539, 0.6802, 0.5042),
        (0.2394, 0.7356, 0.4557),
        (0.3607, 0.7860, 0.3878),
        (0.5063, 0.8288, 0.3004),
        (0.6681, 0.8620, 0.1963),
        (0.8353, 0.8860, 0.1026),
        (0.9932, 0.9062, 0.1439),
    ]
)


@dataclass
class Caption:
    """One panel's caption; only the class name is shortened when the line is too long.

    `title` (what the panel shows, e.g. "student B-cos") is a line of its own above the
    classes; tiles with one explainer have no titles and keep a single caption line.
    """

    prefix: str
    name: str
    suffix: str
    colour: tuple[int, int, int]
    title: str = ""

    def fitted(self, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
        name = self.name
        if draw.textlength(self.prefix + name + self.suffix, font=font) <= width:
            return self.prefix + name + self.suffix
        while name and draw.textlength(self.prefix + name + "..." + self.suffix, font=font) > width:
            name = name[:-1]
        if name != self.name:
            name += "..."
        return self.prefix + name + self.suffix


@dataclass
class HeatmapTile:
    """One rendered test image: its file, its classes and the cosine of its maps.

    `cosine` is that of the job's explainer (as `explanation_cosine`); `cosines` holds the
    cosine of every explainer shown, by name (e.g. {"bcos": 0.8, "gradcam": 0.4}).
    """

    file: str  # relative to the out folder, e.g. "heatmaps/0003.png"
    index: int  # position in the test set
    true: str
    teacher: str
    student: str
    cosine: float
    cosines: dict[str, float] = field(default_factory=dict)

    @property
    def misclassified(self) -> bool:
        return self.student != self.true

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "misclassified": self.misclassified}


def render_heatmaps(
    student: nn.Module, teacher: nn.Module, data: DataBundle, out_dir: Path, count: int, device: torch.device,
    explainer: str = "gradcam",
) -> list[Path]:
    """Write `out_dir/heatmaps/NNNN.png` for `count` test images and `grid.png` showing them all.

    Returns the per-image paths in order, then the grid's path; `count` 0 writes nothing.
    """
    tiles = render_gallery(student, teacher, data, out_dir, count, device, explainer)
    if not tiles:
        return []
    return [out_dir / tile.file for tile in tiles] + [out_dir / HEATMAP_GRID]


def render_gallery(
    student: nn.Module, teacher: nn.Module, data: DataBundle, out_dir: Path, count: int, device: torch.device,
    explainer: str = "gradcam",
) -> list[HeatmapTile]:
    """Render `count` test images (input, then teacher | student maps per shown explainer) and the grid.

    The images are evenly spaced over the test set (the same ones on every run). Every map
    explains the teacher's top-1 class, as in the explanation-cosine metrics, whose per-image
    values the captions show. The grid puts the student's mistakes first, in `GRID_COLUMNS`
    columns. Returns the tiles in test-set order; `count` 0 writes nothing and returns [].
    """
    count = min(count, len(data.test_y))
    if count <= 0:
        return []
    indices = torch.tensor([i * len(data.test_y) // count for i in range(count)])
    x, labels = data.test.take(indices), data.test_y[indices]
    teacher_top1 = predict_logits(teacher, x, device).argmax(dim=1)
    student_top1 = predict_logits(student, x, device).argmax(dim=1)
    images = data.denormalise(x.cpu()).numpy()
    shown = shown_explainers(explainer)
    heat, cosines = _explained_pairs((teacher, student), x, teacher_top1, shown, images.shape[-2:])
    scale = max(1, math.ceil(MIN_PANEL_PX / max(images.shape[-2:])))

    folder = out_dir / HEATMAP_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    provenance = _provenance(teacher, student, shown)
    names = data.class_names
    tiles: list[HeatmapTile] = []
    rows: list[Image.Image] = []
    for row, index in enumerate(indices.tolist()):
        rgb = _to_rgb(images[row])
        classes = (int(labels[row]), int(teacher_top1[row]), int(student_top1[row]))
        row_cosines = {name: float(cosines[name][row]) for name in shown}
        panels = [rgb] + [_overlay(rgb, heat[name][side][row]) for name in shown for side in (0, 1)]
        image = _row_image(panels, _captions(index, classes, names, row_cosines), scale)
        with atomic_path(folder / f"{row:04d}.png") as tmp:
            image.save(tmp, format="PNG", pnginfo=provenance)
        rows.append(image)
        tiles.append(HeatmapTile(f"{HEATMAP_FOLDER}/{row:04d}.png", index, *(names[c] for c in classes),
                                 row_cosines[shown[0]], row_cosines))

    order = misclassified_first(tiles)
    with atomic_path(out_dir / HEATMAP_GRID) as tmp:
        _grid([rows[i] for i in order], [tiles[i].misclassified for i in order]).save(
            tmp, format="PNG", pnginfo=provenance
        )
    log.info("wrote %d heatmap rows (%s) and grid.png", count, ", ".join(shown))
    return tiles


def _explained_pairs(
    models: tuple[nn.Module, nn.Module], x: torch.Tensor, target: torch.Tensor, shown: list[str],
    size: tuple[int, int],
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, torch.Tensor]]:
    """Per explainer: the (teacher, student) maps upsampled to `size` and min-max scaled, and their cosines."""
    heat: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cosines: dict[str, torch.Tensor] = {}
    for name in shown:
        teacher_maps, student_maps = (captum_maps(model, x, target, name).cpu() for model in models)
        cosines[name] = map_cosine(teacher_maps, student_maps)
        heat[name] = (_normalised(_upsample(teacher_maps, size)), _normalised(_upsample(student_maps, size)))
    return heat, cosines


def _captions(index: int, classes: tuple[int, int, int], names: list[str], cosines: dict[str, float]) -> list[Caption]:
    """Captions of one tile: the input's, then teacher and student per explainer in `cosines` order.

    One explainer (Grad-CAM jobs): one line per panel, "teacher: cat", "student: dog  cos 0.42".
    Several: each map panel is titled by model and explainer ("student B-cos"), classes below.
    """
    true, taught, learnt = classes
    teacher_rgb = TEXT_RGB if taught == true else WRONG_RGB
    student_rgb = TEXT_RGB if learnt == true else WRONG_RGB
    if len(cosines) == 1:
        (cosine,) = cosines.values()
        return [Caption(f"#{index}  true: ", names[true], "", TEXT_RGB),
                Caption("teacher: ", names[taught], "", teacher_rgb),
                Caption("student: ", names[learnt], f"  cos {cosine:.2f}", student_rgb)]
    captions = [Caption(f"#{index}  true: ", names[true], "", TEXT_RGB, title="input")]
    for name, cosine in cosines.items():
        label = get_explainer(name).label
        captions += [Caption("top-1: ", names[taught], "", teacher_rgb, title=f"teacher {label}"),
                     Caption("top-1: ", names[learnt], f"  cos {cosine:.2f}", student_rgb, title=f"student {label}")]
    return captions


def _provenance(teacher: nn.Module, student: nn.Module, shown: list[str]) -> PngInfo:
    """What the panels show and how they were made, as PNG text chunks any image tool can read.

    `explainer` describes the job's explainer (for Grad-CAM jobs, as it always has), `panels`
    names the panels in order, `explainers` lists the explainer names shown; `teacher_layer`
    and `student_layer` are the layers Grad-CAM explains.
    """
    provenance = PngInfo()
    provenance.add_text("explainer", f"{get_explainer(shown[0]).reference}, teacher top-1 class")
    provenance.add_text("explainers", ", ".join(shown))
    labels = [get_explainer(name).label for name in shown]
    provenance.add_text("panels", " | ".join(["input"] + [f"{who} {label}" for label in labels
                                                          for who in ("teacher", "student")]))
    if len(shown) > 1:
        provenance.add_text("comparison", f"{get_explainer('gradcam').reference}, teacher top-1 class")
    provenance.add_text("teacher_layer", explained_layer_path(teacher))
    provenance.add_text("student_layer", explained_layer_path(student))
    return provenance


def misclassified_first(tiles: list[HeatmapTile]) -> list[int]:
    """Positions of `tiles` with the student's mistakes first, each group in test-set order."""
    return sorted(range(len(tiles)), key=lambda i: not tiles[i].misclassified)


def colormap(values: np.ndarray) -> np.ndarray:
    """Viridis RGB in [0, 1] for values in [0, 1] (clipped): shape `(...,)` -> `(..., 3)`."""
    positions = np.clip(values, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    low = np.minimum(np.floor(positions).astype(int), len(_VIRIDIS) - 2)
    weight = (positions - low)[..., None]
    return (1.0 - weight) * _VIRIDIS[low] + weight * _VIRIDIS[low + 1]


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def _normalised(maps: np.ndarray) -> np.ndarray:
    """Min-max per map to [0, 1]; a constant map (e.g. all zeros) becomes all zeros."""
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """`(C, H, W)` in [0, 1] -> `(H, W, 3)`; one channel is shown as gray."""
    hwc = image.transpose(1, 2, 0)
    return np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else hwc[..., :3]


def _overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    return (1.0 - HEAT_ALPHA) * rgb + HEAT_ALPHA * colormap(heat)


def _row_image(panels: list[np.ndarray], captions: list[Caption], scale: int) -> Image.Image:
    """Panels side by side, each upscaled `scale`x (nearest), with its caption (and title line) underneath."""
    panel_h, panel_w = panels[0].shape[0] * scale, panels[0].shape[1] * scale
    width = len(panels) * panel_w + (len(panels) - 1) * PANEL_GAP_PX
    titled = any(caption.title for caption in captions)
    canvas = Image.new("RGB", (width, panel_h + CAPTION_PX * (2 if titled else 1)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=11)
    for i, (panel, caption) in enumerate(zip(panels, captions, strict=True)):
        pixels = (np.clip(panel, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        left = i * (panel_w + PANEL_GAP_PX)
        canvas.paste(Image.fromarray(pixels).resize((panel_w, panel_h), Image.NEAREST), (left, 0))
        top = panel_h + 3
        if titled:
            draw.text((left + 2, top), Caption("", caption.title, "", TEXT_RGB).fitted(draw, font, panel_w - 4),
                      fill=TEXT_RGB, font=font)
            top += CAPTION_PX
        draw.text((left + 2, top), caption.fitted(draw, font, panel_w - 4), fill=caption.colour, font=font)
    return canvas



def _grid(rows: list[Image.Image], flagged: list[bool]) -> Image.Image:
    """Tiles in `GRID_COLUMNS` columns, row-major; a flagged tile (a student mistake) gets a red frame."""
    columns = min(GRID_COLUMNS, len(rows))
    lines = math.ceil(len(rows) / columns)
    tile_w, tile_h = max(row.width for row in rows), max(row.height for row in rows)
    cell_w, cell_h = tile_w + 2 * FRAME_PX, tile_h + 2 * FRAME_PX
    grid = Image.new("RGB", (columns * cell_w + (columns - 1) * GRID_GAP_PX,
                             lines * cell_h + (lines - 1) * GRID_GAP_PX), "white")
    draw = ImageDraw.Draw(grid)
    for position, (row, flag) in enumerate(zip(rows, flagged, strict=True)):
        left = (position % columns) * (cell_w + GRID_GAP_PX)
        top = (position // columns) * (cell_h + GRID_GAP_PX)
        if flag:
            draw.rectangle([left, top, left + cell_w - 1, top + cell_h - 1], outline=WRONG_RGB, width=FRAME_PX)
        grid.paste(row, (left + FRAME_PX, top + FRAME_PX))
    return grid
