"""Pictures: detections drawn on images, and where one pixel attends in every attention block.

The attention pictures are the paper's (Zhu et al. 2019, figures of the four terms): for a query pixel,
each ``GeneralizedAttention`` block's attention over its key map, split into the real attention ('all') and
the softmax of each enabled term alone (E1 query-key content, E2 query content & relative position, E3 key
content only, E4 relative position only), per head, overlaid on the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from genattn.data.transforms import load_image as load_image_tensor

__all__ = ["load_image", "draw_detections", "class_names", "attention_maps", "key_grid", "block_title",
           "render_attention_block", "render_attention_summary", "attention_pictures"]

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def load_image(path: str | Path, *, ignore_orientation: bool = False) -> tuple[Image.Image, torch.Tensor]:
    """Read an image file as RGB, upright by its EXIF orientation unless ``ignore_orientation``; returns the PIL
    image and its uint8 tensor [3, H, W] (see :func:`genattn.data.transforms.load_image`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    tensor = load_image_tensor(path, ignore_orientation=ignore_orientation)
    return Image.fromarray(tensor.permute(1, 2, 0).contiguous().numpy()), tensor


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def draw_detections(image: Image.Image, detection: dict[str, Any], names: dict[int, str], *,
                    score_thr: float = 0.3, scale: float = 1.0) -> Image.Image:
    """Draw boxes, class names and scores on a copy of ``image``.

    Args:
        image: the RGB image the boxes refer to.
        detection: ``{'boxes': [D, 4] xyxy, 'scores': [D], 'labels': [D] category ids}`` (tensors or lists).
        names: category id -> class name.
        score_thr: detections with a lower score are not drawn.
        scale: enlarge the picture by this factor first (small images would leave no room for labels).
    """
    out = image.copy() if scale == 1 else image.resize((round(image.width * scale), round(image.height * scale)),
                                                        Image.BILINEAR)
    draw = ImageDraw.Draw(out)
    font = _font(max(10, min(out.size) // 24))
    boxes, scores, labels = (torch.as_tensor(detection[k]).tolist() for k in ("boxes", "scores", "labels"))
    order = sorted(range(len(scores)), key=lambda i: scores[i])  # best drawn last, on top
    for i in order:
        if scores[i] < score_thr:
            continue
        label = int(labels[i])
        colour = _PALETTE[label % len(_PALETTE)]
        x0, y0, x1, y1 = (v * scale for v in boxes[i])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=max(1, min(out.size) // 160 + 1))
        text = f"{names.get(label, str(label))} {scores[i]:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
        ty = y0 - (ty1 - ty0) - 2 if y0 - (ty1 - ty0) - 2 >= 0 else y0
        draw.rectangle([x0, ty, x0 + tx1 - tx0 + 3, ty + ty1 - ty0 + 2], fill=colour)
        draw.text((x0 + 1, ty - ty0 + 1), text, fill=(0, 0, 0), font=font)
    return out


def class_names(model: torch.nn.Module) -> dict[int, str]:
    ids = list(getattr(model, "category_ids", ()))
    names = list(getattr(model, "class_names", ()))
    return {int(i): str(n) for i, n in zip(ids, names)}


# --------------------------------------------------------------------------------------------------------
# Attention


def _attention_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    backbone = getattr(model, "backbone", model)
    return [(name.removesuffix(".gen_attention_block"), m) for name, m in backbone.named_modules()
            if name.endswith("gen_attention_block")]


def _resized_size(model: torch.nn.Module, h: int, w: int) -> tuple[int, int]:
    """The size the model resizes an h x w image to (MMDetection's keep-ratio rule)."""
    transform = getattr(model, "transform", model)
    min_size = getattr(transform, "min_size", getattr(model, "min_size", 800))
    max_size = getattr(transform, "max_size", getattr(model, "max_size", 1333))
    min_size = min_size[-1] if isinstance(min_size, (tuple, list)) else min_size
    scale = min(max_size / max(h, w), min_size / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


@torch.inference_mode()
def attention_maps(model: torch.nn.Module, image: torch.Tensor, point: tuple[int, int]) -> list[dict[str, Any]]:
    """Where pixel ``point`` = (x, y) of ``image`` attends in every attention block of ``model``'s backbone.

    A forward hook captures each block's input during one forward pass; the point is mapped to the block's
    feature-map cell and ``block.point_attention`` gives the attention of that query.

    Args:
        model: a detector whose backbone has ``gen_attention_block`` modules.
        image: [3, H, W], uint8 or float in [0, 1] (what the model takes).
        point: (x, y) in image pixels.

    Returns:
        Per block: ``{'name', 'maps': {'all'|'E1'..'E4': array [heads, Hk, Wk]}, 'query': (fx, fy),
        'feature_size': (Hf, Wf), 'stride': image pixels per feature cell, 'kv_stride', 'resized': (h, w)}``.
    """
    h, w = image.shape[-2:]
    x, y = point
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"--point {x} {y} lies outside the {w}x{h} image (x in 0..{w - 1}, y in 0..{h - 1})")
    blocks = _attention_blocks(model)
    if not blocks:
        raise ValueError("this model has no attention blocks (pick a model with an attention type, "
                         "e.g. faster_rcnn_r50_fpn_attention_1111_1x_coco)")
    captured: dict[str, torch.Tensor] = {}
    padded: list[torch.Size] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: captured.__setitem__(name, args[0]))
             for name, m in blocks]
    backbone = getattr(model, "backbone", model)
    hooks.append(backbone.register_forward_pre_hook(lambda mod, args: padded.append(args[0].shape)))
    device = next(model.parameters()).device
    model.eval()
    try:
        model([image.to(device)])
    finally:
        for hook in hooks:
            hook.remove()
    rh, rw = _resized_size(model, h, w)
    hp = padded[0][-2] if padded else rh
    out = []
    for name, block in blocks:
        feat = captured[name]
        hf, wf = feat.shape[-2:]
        stride = hp / hf  # resized-image pixels per feature cell
        fx = min(int(x * rw / w // stride), wf - 1)
        fy = min(int(y * rh / h // stride), hf - 1)
        maps = block.point_attention(feat[:1], fy, fx)
        out.append({"name": name, "maps": {k: v[0].float().cpu().numpy() for k, v in maps.items()},
                    "query": (fx, fy), "feature_size": (hf, wf), "stride": stride,
                    "kv_stride": int(getattr(block, "kv_stride", 1)), "resized": (rh, rw)})
    return out


def key_grid(block: dict[str, Any]) -> dict[str, Any]:
    """A block's key grid: ``{'size': (Hk, Wk), 'cell_px': image pixels per key cell (resized image)}``."""
    hk, wk = next(iter(block["maps"].values())).shape[-2:]
    return {"size": (int(hk), int(wk)), "cell_px": block["stride"] * block["kv_stride"]}


def block_title(block: dict[str, Any], point: tuple[int, int]) -> str:
    """The title of a block's picture: the query, its feature cell and the key grid the colours are drawn on."""
    hf, wf = block["feature_size"]
    grid = key_grid(block)
    hk, wk = grid["size"]
    return (f"{block['name']}: where pixel ({point[0]}, {point[1]}) attends (cell {block['query']} of the {hf}x{wf} "
            f"map); keys on a {hk}x{wk} grid, one per {grid['cell_px']:g}x{grid['cell_px']:g} px of the resized "
            f"image; colour: weight / the tile's peak, the peak as a multiple of uniform (1/{hk * wk})")


def _heat_overlay(image: Image.Image, amap: np.ndarray, block: dict[str, Any], cell: tuple[int, int]) -> Image.Image:
    """One key map [Hk, Wk] over a grey copy of ``image`` at ``cell`` (w, h): one flat colour per key cell (the
    map's real resolution), the key grid's lines, and the peak weight as a multiple of uniform."""
    import matplotlib

    rh, rw = block["resized"]
    step = key_grid(block)["cell_px"]  # resized-image pixels per key cell
    peak = float(amap.max())
    norm = amap / max(peak, 1e-12)
    full = (max(1, round(amap.shape[1] * step)), max(1, round(amap.shape[0] * step)))
    heat = Image.fromarray((norm * 255).astype(np.uint8)).resize(full, Image.NEAREST)
    heat = heat.crop((0, 0, rw, rh)).resize(cell, Image.NEAREST)  # drop the padding, back to image scale
    rgb = matplotlib.colormaps["inferno"](np.asarray(heat) / 255.0)[..., :3]
    grey = np.asarray(image.convert("L").convert("RGB").resize(cell, Image.BILINEAR), dtype=np.float32) / 255.0
    tile = Image.fromarray((255 * (0.35 * grey + 0.65 * rgb)).astype(np.uint8))
    draw = ImageDraw.Draw(tile)
    sx, sy = cell[0] / rw, cell[1] / rh
    for j in range(1, amap.shape[1]):
        if j * step < rw:
            draw.line([(j * step * sx, 0), (j * step * sx, cell[1])], fill=(255, 255, 255), width=1)
    for i in range(1, amap.shape[0]):
        if i * step < rh:
            draw.line([(0, i * step * sy), (cell[0], i * step * sy)], fill=(255, 255, 255), width=1)
    text = f"peak {peak * amap.size:.1f}x"
    font = _font(10)
    x0, y0, x1, y1 = draw.textbbox((2, 2), text, font=font)
    draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], fill=(0, 0, 0))
    draw.text((2, 2), text, fill=(255, 255, 255), font=font)
    return tile


def _mark(draw: ImageDraw.ImageDraw, x: float, y: float, r: int = 4) -> None:
    draw.ellipse([x - r - 1, y - r - 1, x + r + 1, y + r + 1], outline=(0, 0, 0), width=2)
    draw.ellipse([x - r, y - r, x + r, y + r], outline=(0, 255, 0), width=2)


def _grid(rows: list[list[Image.Image]], row_labels: list[str], col_labels: list[str], title: str,
          cell: tuple[int, int]) -> Image.Image:
    import textwrap

    font = _font(12)
    cw, ch = cell
    left, pad = 64, 2
    width = left + len(col_labels) * (cw + pad)
    lines = textwrap.wrap(title, max(40, width // 7))
    top = 20 + 15 * len(lines)
    grid = Image.new("RGB", (width, top + len(rows) * (ch + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    draw.multiline_text((4, 2), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=2)
    for j, label in enumerate(col_labels):
        draw.text((left + j * (cw + pad) + 2, top - 15), label, fill=(0, 0, 0), font=font)
    for i, (label, row) in enumerate(zip(row_labels, rows)):
        draw.multiline_text((4, top + i * (ch + pad) + ch // 2 - 12), label, fill=(0, 0, 0), font=font)
        for j, tile in enumerate(row):
            grid.paste(tile, (left + j * (cw + pad), top + i * (ch + pad)))
    return grid


def _cell(image: Image.Image, longest: int = 160) -> tuple[int, int]:
    w, h = image.size
    s = longest / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def render_attention_block(image: Image.Image, block: dict[str, Any], point: tuple[int, int]) -> Image.Image:
    """One block's picture: rows = 'all' and each term, columns = heads (then their mean)."""
    cell = _cell(image)
    sx, sy = cell[0] / image.size[0], cell[1] / image.size[1]
    terms = list(block["maps"])
    heads = block["maps"][terms[0]].shape[0]
    rows = []
    for term in terms:
        maps = list(block["maps"][term]) + [block["maps"][term].mean(0)]
        tiles = [_heat_overlay(image, m, block, cell) for m in maps]
        for t in tiles:
            _mark(ImageDraw.Draw(t), point[0] * sx, point[1] * sy)
        rows.append(tiles)
    return _grid(rows, terms, [f"head {i}" for i in range(heads)] + ["mean"], block_title(block, point), cell)


def render_attention_summary(image: Image.Image, blocks: list[dict[str, Any]], point: tuple[int, int]) -> Image.Image:
    """All blocks in one picture: rows = blocks (labelled with their key grids), columns = 'all' and each term,
    averaged over heads."""
    cell = _cell(image, 128)
    sx, sy = cell[0] / image.size[0], cell[1] / image.size[1]
    terms = sorted({t for b in blocks for t in b["maps"]}, key=lambda t: (t != "all", t))
    rows = []
    for block in blocks:
        tiles = []
        for term in terms:
            if term in block["maps"]:
                tile = _heat_overlay(image, block["maps"][term].mean(0), block, cell)
            else:
                tile = Image.new("RGB", cell, (230, 230, 230))
            _mark(ImageDraw.Draw(tile), point[0] * sx, point[1] * sy)
            tiles.append(tile)
        rows.append(tiles)
    labels = [f"{b['name'].replace('layer', 'L')}\nkeys\n{key_grid(b)['size'][0]}x{key_grid(b)['size'][1]}"
              for b in blocks]
    title = (f"where pixel {tuple(point)} attends, per block (rows: keys on the grid named); colour: weight / the "
             f"tile's peak, the peak as a multiple of uniform")
    return _grid(rows, labels, [f"{t} (mean)" for t in terms], title, cell)


def attention_pictures(model: torch.nn.Module, image_path: Path, point: tuple[int, int],
                       out_dir: Path, *, ignore_orientation: bool = False) -> list[Path]:
    """Write ``attention.png`` (all blocks, head means) and ``attention_<block>.png`` (every head) for a point.

    The point is in the upright image (EXIF orientation applied), or in the stored one if ``ignore_orientation``.

    Returns:
        The written PNG paths, the summary first.
    """
    pil, tensor = load_image(image_path, ignore_orientation=ignore_orientation)
    blocks = attention_maps(model, tensor, point)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "attention.png"]
    render_attention_summary(pil, blocks, point).save(files[0])
    for block in blocks:
        path = out_dir / f"attention_{block['name'].replace('.', '_')}.png"
        render_attention_block(pil, block, point).save(path)
        files.append(path)
    return files
