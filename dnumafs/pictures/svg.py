"""A small SVG writer: elements as text, attributes escaped; no library needed to draw lines,
text and an embedded raster."""
from __future__ import annotations

import base64
from collections.abc import Iterable
from xml.sax.saxutils import escape, quoteattr

FONT = "font-family:DejaVu Sans,Helvetica,Arial,sans-serif"


def _attrs(attrs: dict[str, object]) -> str:
    return "".join(f" {k.rstrip('_').replace('_', '-')}={quoteattr(_fmt(v))}"
                   for k, v in attrs.items() if v is not None)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.2f}".rstrip("0").rstrip(".")
    return str(v)


def element(tag: str, body: str | None = None, /, **attrs: object) -> str:
    """<tag attrs/> or <tag attrs>body</tag> (body is already SVG)."""
    if body is None:
        return f"<{tag}{_attrs(attrs)}/>"
    return f"<{tag}{_attrs(attrs)}>{body}</{tag}>"


def text(x: float, y: float, content: str, size: float = 12, **attrs: object) -> str:
    return element("text", escape(content), x=x, y=y, font_size=size, **attrs)


def line(x1: float, y1: float, x2: float, y2: float, stroke: str = "#000",
         width: float = 1, **attrs: object) -> str:
    return element("line", x1=x1, y1=y1, x2=x2, y2=y2, stroke=stroke, stroke_width=width,
                   **attrs)


def rect(x: float, y: float, w: float, h: float, fill: str, **attrs: object) -> str:
    return element("rect", x=x, y=y, width=w, height=h, fill=fill, **attrs)


def polyline(points: Iterable[tuple[float, float]], stroke: str, width: float = 1.5,
             **attrs: object) -> str:
    pts = " ".join(f"{_fmt(float(x))},{_fmt(float(y))}" for x, y in points)
    return element("polyline", points=pts, fill="none", stroke=stroke, stroke_width=width,
                   **attrs)


def png_image(x: float, y: float, w: float, h: float, png: bytes) -> str:
    """A PNG embedded as a data URI, drawn cell for cell (no smoothing between pixels)."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    return element("image", x=x, y=y, width=w, height=h, href=uri,
                   preserveAspectRatio="none", style="image-rendering:pixelated")


def document(width: float, height: float, body: Iterable[str], title: str) -> str:
    """A whole SVG file: white background, a default font, and a <title>."""
    head = element("title", escape(title))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            + element("svg", "\n".join([head, rect(0, 0, width, height, "#fff"), *body]),
                      xmlns="http://www.w3.org/2000/svg", width=width, height=height,
                      viewBox=f"0 0 {_fmt(width)} {_fmt(height)}", style=FONT) + "\n")
