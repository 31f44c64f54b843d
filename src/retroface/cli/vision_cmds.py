"""`detect`, `compare` and `models`: the face engine on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from retroface.cli.common import console, engine, fail, print_json, user_errors, with_status

if TYPE_CHECKING:
    from retroface.vision.types import Face, ImageArray


def _analyse(path: Path, quiet: bool) -> tuple[ImageArray, list[Face]]:
    from retroface.config import get_settings
    from retroface.media.images import load_image

    with user_errors():
        image = load_image(path, max_pixels=get_settings().max_image_pixels)
        eng = engine()
        faces = with_status(f"Analysing {path.name}…", lambda: eng.analyse(image), quiet)
    return image, faces


def _annotate(image: ImageArray, faces: list[Face], out: Path) -> None:
    import cv2

    canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    thick = max(2, round(max(image.shape[:2]) / 400))
    for i, f in enumerate(faces):
        colour = (60, 200, 60) if f.quality.acceptable else (0, 140, 255)
        x1, y1, x2, y2 = (round(v) for v in f.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thick)
        for x, y in f.landmarks:
            cv2.circle(canvas, (round(x), round(y)), thick + 1, (255, 0, 0), -1)
        label = f"#{i} {f.det_score:.2f}"
        cv2.putText(
            canvas, label, (x1, max(0, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, thick / 3, colour, thick
        )
    if not cv2.imwrite(str(out), canvas):
        fail(f"could not write {out} (unknown image extension or unwritable folder)")


def detect(
    image: Path = typer.Argument(..., help="Image file (JPEG, PNG, WebP, BMP, TIFF, GIF)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    annotate: Path | None = typer.Option(None, "--annotate", help="Write a copy with boxes drawn."),
) -> None:
    """Find every face in IMAGE with its landmarks, scores and quality verdict."""
    img, faces = _analyse(image, json_out)
    if annotate:
        _annotate(img, faces, annotate)
    if json_out:
        print_json(
            {
                "image": str(image),
                "width": img.shape[1],
                "height": img.shape[0],
                "model": faces[0].model.to_dict() if faces else engine().identity.to_dict(),
                "faces": [dict(index=i, **f.to_dict()) for i, f in enumerate(faces)],
            }
        )
        return
    if not faces:
        console.print(f"No face found in {image}.")
        return
    table = Table(title=f"{len(faces)} face(s) in {image.name}")
    for col in ("#", "box (x1,y1,x2,y2)", "score", "eyes px", "sharp", "yaw", "mate", "verdict"):
        table.add_column(col)
    for i, f in enumerate(faces):
        q = f.quality
        verdict = "[green]ok[/]" if q.acceptable else "[yellow]" + "; ".join(q.reasons) + "[/]"
        table.add_row(
            str(i),
            ",".join(f"{v:.0f}" for v in f.box),
            f"{f.det_score:.2f}",
            f"{q.inter_eye_px:.0f}",
            f"{q.sharpness:.0f}",
            f"{q.yaw_deg:.0f}",
            # expected chance that a search with this face finds its mate (probe quality model)
            "" if q.hit_chance is None else f"{q.hit_chance:.0%} {q.verdict}",
            verdict,
        )
    console.print(table)
    if annotate:
        console.print(f"Annotated copy written to {annotate}")


def compare(
    image_a: Path = typer.Argument(..., help="First image."),
    image_b: Path = typer.Argument(..., help="Second image."),
    threshold: float | None = typer.Option(
        None, help="Similarity at or above which the faces are called the same person."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Compare the main face of two images: cosine similarity and the verdict at the threshold."""
    from retroface.config import get_settings
    from retroface.media.images import load_image
    from retroface.vision.compare import compare_faces

    t = get_settings().match_threshold if threshold is None else threshold
    with user_errors():
        max_pixels = get_settings().max_image_pixels
        img_a = load_image(image_a, max_pixels=max_pixels)
        img_b = load_image(image_b, max_pixels=max_pixels)
        eng = engine()
        result = with_status(
            "Comparing…",
            lambda: compare_faces(eng, img_a, img_b, t, (str(image_a), str(image_b))),
            json_out,
        )
    if json_out:
        data = result.to_dict()
        data["a"] = {"image": str(image_a), **data["a"]}
        data["b"] = {"image": str(image_b), **data["b"]}
        print_json(data)
        return
    same = result.same_person
    verdict = "[green]likely the same person[/]" if same else "[red]likely different people[/]"
    console.print(f"similarity {result.similarity:.3f} (threshold {t:.2f}): {verdict}")
    for path, n, face in (
        (image_a, result.faces_in_a, result.face_a),
        (image_b, result.faces_in_b, result.face_b),
    ):
        note = f" ({n} faces; using the main one)" if n > 1 else ""
        if not face.quality.acceptable:
            note += " [yellow]low quality: " + "; ".join(face.quality.reasons) + "[/]"
        console.print(f"  {path.name}{note}")


def models(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Backends, weight files, licences and hashes."""
    from retroface.config import get_settings
    from retroface.vision.engines import BACKENDS, build_engine

    s = get_settings()
    rows = []
    for name in BACKENDS:
        try:
            # the weights as listed before: without the flip suffix RETROFACE_FLIP adds to the key
            eng = build_engine(s, backend=name, flip=False)
            rows.append(
                {
                    "backend": name,
                    "available": True,
                    "default": name == s.backend,
                    **eng.identity.to_dict(),
                }
            )
        except Exception as exc:  # report every backend, whatever is wrong with one
            rows.append(
                {
                    "backend": name,
                    "available": False,
                    "default": name == s.backend,
                    "error": str(exc),
                }
            )
    if json_out:
        print_json({"backends": rows})
        return
    for row in rows:
        title = f"[bold]{row['backend']}[/]" + (" (default)" if row["default"] else "")
        if not row["available"]:
            console.print(f"{title}: [red]unavailable[/] — {row['error']}")
            continue
        console.print(f"{title}: {row['name']} v{row['version']}, {row['embedding_size']}-d")
        console.print(f"  licence: [yellow]{row['licence']}[/]")
        for w in row["weights"]:
            console.print(f"  {w['name']}  sha256 {w['sha256']}\n    {w['path']}")
