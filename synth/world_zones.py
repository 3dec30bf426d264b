"""Painters of the procedural world's land-use zones: fields, town and industrial blocks, woods, orchards, parks."""
from __future__ import annotations

import math

import cv2
import numpy as np

SUN = (0.6, 0.8)  # unit ground direction shadows fall along (image x right, y down): towards SE
ZONES = ("fields", "town", "forest", "park", "industrial", "orchard")
ZONE_P = (0.36, 0.24, 0.14, 0.10, 0.09, 0.07)
ROOFS = np.array([[150, 60, 45], [175, 85, 60], [120, 50, 40], [95, 95, 100], [60, 60, 66], [140, 140, 135],
                  [185, 120, 80], [80, 55, 45], [200, 200, 195], [70, 90, 110], [120, 130, 90]], np.float32)
CROPS = np.array([[196, 176, 105], [120, 150, 70], [140, 110, 80], [160, 170, 95], [85, 120, 55],
                  [175, 150, 110], [110, 90, 65], [150, 160, 60], [200, 190, 140]], np.float32)



class _Painter:
    """Helpers that draw in pixels given sizes in metres."""

    def __init__(self, img: np.ndarray, px_per_m: float, rng: np.random.Generator) -> None:
        self.img, self.k, self.rng = img, px_per_m, rng

    def rect(self, cx: float, cy: float, w_m: float, h_m: float, ang: float) -> np.ndarray:
        """Corners (4, 2) int32 (in 1/16 px, shift 4) of a rotated rectangle centred at pixel (cx, cy)."""
        c, s = math.cos(ang), math.sin(ang)
        hw, hh = w_m * self.k / 2, h_m * self.k / 2
        pts = [(cx + dx * c - dy * s, cy + dx * s + dy * c) for dx, dy in ((-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh))]
        return np.round(np.array(pts) * 16).astype(np.int32)

    def shadow(self, mask: np.ndarray, poly: np.ndarray, height_m: float) -> None:
        off = np.round(np.array(SUN) * height_m * self.k * 16).astype(np.int32)
        hull = cv2.convexHull(np.concatenate([poly, poly + off]))
        cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_AA, shift=4)

    def tree(self, mask: np.ndarray, x: float, y: float, r_m: float, colour: np.ndarray) -> None:
        r = max(1, int(round(r_m * self.k * 16)))
        p = (int(round(x * 16)), int(round(y * 16)))
        off = (int(round(SUN[0] * r * 0.9)), int(round(SUN[1] * r * 0.9)))
        cv2.circle(mask, (p[0] + off[0], p[1] + off[1]), r, 1, -1, cv2.LINE_AA, 4)
        cv2.circle(self.img, p, r, colour.tolist(), -1, cv2.LINE_AA, 4)
        hl = (colour * 1.25 + 8).clip(0, 255).tolist()
        cv2.circle(self.img, (p[0] - r // 3, p[1] - r // 3), max(1, r // 2), hl, -1, cv2.LINE_AA, 4)


def _noise(rng: np.random.Generator, h: int, w: int, cell_px: float) -> np.ndarray:
    """Smooth noise in [-1, 1]: random values on a coarse grid, cubic-upsampled."""
    gh, gw = max(2, int(h / cell_px) + 2), max(2, int(w / cell_px) + 2)
    g = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def _apply_shadow(img: np.ndarray, mask: np.ndarray, strength: float = 0.45) -> None:
    m = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8)
    img *= (1.0 - strength * np.clip(m, 0, 1))[..., None]


def _fields(p: _Painter, h: int, w: int, x0: int, y0: int) -> np.ndarray:
    rng, k = p.rng, p.k
    out = np.empty((h, w, 3), np.float32)
    th = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32)
    u = (xx * math.cos(th) + yy * math.sin(th)) / k
    v = (-xx * math.sin(th) + yy * math.cos(th)) / k
    ub = np.cumsum(rng.uniform(25, 90, 64)) + u.min() - 40
    si = np.searchsorted(ub, u)
    vb = np.cumsum(rng.uniform(50, 220, (65, 40)), axis=1) + v.min() - 100 + rng.uniform(0, 100, (65, 1))
    seg = np.empty_like(si)
    for s in np.unique(si):
        sel = si == s
        seg[sel] = np.searchsorted(vb[s], v[sel])
    pid = si * 41 + seg
    n = int(pid.max()) + 1
    col = CROPS[rng.integers(0, len(CROPS), n)] * rng.uniform(0.85, 1.12, (n, 1))
    period = rng.uniform(2.0, 7.0, n)
    across = rng.random(n) < 0.5
    amp = rng.uniform(6, 22, n)
    phase = np.where(across[pid], u, v) / period[pid] * 2 * math.pi
    out[:] = col[pid]
    out += (amp[pid] * np.sin(phase))[..., None]
    # Parcel borders: thin darker hedges / tracks.
    edge = (cv2.Laplacian(pid.astype(np.float32), cv2.CV_32F) != 0)
    edge = cv2.dilate(edge.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
    out[edge] = out[edge] * 0.7 + np.array([60, 75, 40], np.float32) * 0.3
    return out


def _town(p: _Painter, h: int, w: int, x0: int, y0: int, industrial: bool) -> np.ndarray:
    rng, k = p.rng, p.k
    img = np.empty((h, w, 3), np.float32)
    img[:] = (np.array([120, 128, 118]) if industrial else np.array([105, 135, 80])) * rng.uniform(0.9, 1.1)
    sub = _Painter(img, k, rng)
    shadow = np.zeros((h, w), np.uint8)
    th = rng.uniform(0, math.pi / 2)
    c, s = math.cos(th), math.sin(th)
    bw, bh = (rng.uniform(90, 160), rng.uniform(70, 130)) if industrial else (rng.uniform(55, 110), rng.uniform(40, 80))
    street = rng.uniform(7, 11)
    span = math.hypot(h, w) / k
    cx, cy = w / 2, h / 2
    roofs: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    for i in range(-int(span / bw) - 1, int(span / bw) + 2):
        for j in range(-int(span / bh) - 1, int(span / bh) + 2):
            bx, by = i * bw, j * bh  # block centre in the rotated frame, metres
            px, py = cx + (bx * c - by * s) * k, cy + (bx * s + by * c) * k
            if not (-bw * k < px < w + bw * k and -bh * k < py < h + bh * k):
                continue
            iw, ih = bw - street, bh - street
            if industrial:
                _industrial_block(sub, shadow, roofs, px, py, iw, ih, th)
            else:
                _house_block(sub, shadow, roofs, px, py, iw, ih, th)
    # Streets under everything else: asphalt with lighter kerbs.
    street_mask = np.zeros((h, w), np.uint8)
    for i in range(-int(span / bw) - 2, int(span / bw) + 3):
        x = (i + 0.5) * bw
        a = (cx + (x * c - (-span) * s) * k, cy + (x * s + (-span) * c) * k)
        b = (cx + (x * c - span * s) * k, cy + (x * s + span * c) * k)
        cv2.line(street_mask, _pt(a), _pt(b), 1, max(1, int(street * k)), cv2.LINE_AA, 4)
    for j in range(-int(span / bh) - 2, int(span / bh) + 3):
        y = (j + 0.5) * bh
        a = (cx + (-span * c - y * s) * k, cy + (-span * s + y * c) * k)
        b = (cx + (span * c - y * s) * k, cy + (span * s + y * c) * k)
        cv2.line(street_mask, _pt(a), _pt(b), 1, max(1, int(street * k)), cv2.LINE_AA, 4)
    sm = street_mask.astype(bool)
    img[sm] = np.array([98, 98, 102], np.float32) * rng.uniform(0.9, 1.1)
    _apply_shadow(img, shadow)
    for poly, colour, ridge in roofs:
        cv2.fillConvexPoly(img, poly, colour.tolist(), cv2.LINE_AA, 4)
        if ridge is not None:  # gable roof: the half away from the sun is darker
            cv2.fillConvexPoly(img, ridge, (colour * 0.72).tolist(), cv2.LINE_AA, 4)
    return img


def _pt(a: tuple[float, float]) -> tuple[int, int]:
    return int(round(a[0] * 16)), int(round(a[1] * 16))


def _house_block(p: _Painter, shadow: np.ndarray, roofs: list, px: float, py: float, iw: float, ih: float, th: float) -> None:
    rng, k = p.rng, p.k
    c, s = math.cos(th), math.sin(th)
    palette = ROOFS[rng.choice(len(ROOFS), 3, replace=False)]  # neighbourhoods share a few roof colours
    for side in (-1, 1):  # a row of houses along each long side of the block
        x = -iw / 2 + rng.uniform(2, 6)
        while x < iw / 2 - 8:
            hw, hd = rng.uniform(8, 16), rng.uniform(8, 13)
            if x + hw > iw / 2:
                break
            bx, by = x + hw / 2, side * (ih / 2 - hd / 2 - rng.uniform(2, 6))
            qx, qy = px + (bx * c - by * s) * k, py + (bx * s + by * c) * k
            poly = p.rect(qx, qy, hw, hd, th)
            p.shadow(shadow, poly, rng.uniform(5, 9))
            col = palette[rng.integers(0, 3)] * rng.uniform(0.9, 1.1)
            half = p.rect(qx - s * hd * k / 4, qy + c * hd * k / 4, hw, hd / 2, th)
            roofs.append((poly, col, half))
            x += hw + rng.uniform(3, 12)
    for _ in range(rng.integers(1, 5)):  # garden trees
        bx, by = rng.uniform(-iw / 2, iw / 2), rng.uniform(-ih / 6, ih / 6)
        p.tree(shadow, px + (bx * c - by * s) * k, py + (bx * s + by * c) * k, rng.uniform(2, 4.5),
               np.array([45, 80, 35], np.float32) * rng.uniform(0.8, 1.2))


def _industrial_block(p: _Painter, shadow: np.ndarray, roofs: list, px: float, py: float, iw: float, ih: float, th: float) -> None:
    rng, k = p.rng, p.k
    c, s = math.cos(th), math.sin(th)
    lot = p.rect(px, py, iw, ih, th)
    cv2.fillConvexPoly(p.img, lot, (110, 110, 112), cv2.LINE_AA, 4)
    n = rng.integers(1, 3)
    for b in range(n):
        hw, hd = rng.uniform(0.4, 0.85) * iw, rng.uniform(0.35, 0.8) * ih / n
        bx = rng.uniform(-iw / 2 + hw / 2, iw / 2 - hw / 2)
        by = -ih / 2 + (b + 0.5) * ih / n
        qx, qy = px + (bx * c - by * s) * k, py + (bx * s + by * c) * k
        poly = p.rect(qx, qy, hw, hd, th)
        p.shadow(shadow, poly, rng.uniform(8, 16))
        roofs.append((poly, np.array([[215, 215, 210], [170, 175, 180], [90, 95, 100], [150, 160, 170],
                                      [120, 80, 70]][rng.integers(0, 5)], np.float32), None))
        for _ in range(rng.integers(2, 8)):  # rooftop units
            ux, uy = bx + rng.uniform(-hw / 3, hw / 3), by + rng.uniform(-hd / 3, hd / 3)
            roofs.append((p.rect(px + (ux * c - uy * s) * k, py + (ux * s + uy * c) * k, 3, 3, th),
                          np.array([60, 60, 60], np.float32), None))
    # Parking stripes on the free part of the lot.
    for i in range(int(iw / 3)):
        bx = -iw / 2 + 1.5 + i * 3
        by = ih / 2 - 3
        a = (px + (bx * c - by * s) * k, py + (bx * s + by * c) * k)
        b = (px + (bx * c - (by - 5) * s) * k, py + (bx * s + (by - 5) * c) * k)
        cv2.line(p.img, _pt(a), _pt(b), (225, 225, 225), 1, cv2.LINE_AA, 4)


def _woods(p: _Painter, h: int, w: int, density: float, base: tuple[int, int, int], orchard: bool) -> np.ndarray:
    rng, k = p.rng, p.k
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array(base, np.float32) * rng.uniform(0.9, 1.1)
    sub = _Painter(img, k, rng)
    shadow = np.zeros((h, w), np.uint8)
    area = h * w / k**2
    if orchard:
        th, gap = rng.uniform(0, math.pi), rng.uniform(5, 9)
        c, s = math.cos(th), math.sin(th)
        span = math.hypot(h, w) / k / 2
        for a in np.arange(-span, span, gap):
            for b in np.arange(-span, span, gap * 0.8):
                x, y = w / 2 + (a * c - b * s) * k, h / 2 + (a * s + b * c) * k
                if -5 < x < w + 5 and -5 < y < h + 5:
                    sub.tree(shadow, x, y, gap * 0.28, np.array([70, 105, 45], np.float32) * rng.uniform(0.85, 1.1))
    else:
        # Canopy tone drifts over tens of metres and clearings open where the noise is high, so
        # forest crops are not interchangeable.
        tone = _noise(rng, h, w, 60 * k)
        clear = _noise(rng, h, w, 90 * k) > (0.45 if density > 0.02 else 2.0)
        img[clear] = np.array([105, 125, 70], np.float32)
        n = int(area * density)
        xs, ys = rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)
        rs = rng.uniform(1.8, 4.5, n)
        tint = rng.uniform(0.75, 1.15, n) * (1 + 0.3 * tone[ys.astype(int), xs.astype(int)])
        keep = ~clear[ys.astype(int), xs.astype(int)]
        green = np.array([40, 72, 32], np.float32) if density > 0.02 else np.array([55, 90, 40], np.float32)
        for x, y, r, t in zip(xs[keep], ys[keep], rs[keep], tint[keep]):
            sub.tree(shadow, x, y, r, green * t)
    _apply_shadow(img, shadow, 0.5)
    return img


def _park(p: _Painter, h: int, w: int) -> np.ndarray:
    rng, k = p.rng, p.k
    img = _woods(p, h, w, 0.004, (110, 150, 75), False)
    for _ in range(rng.integers(1, 4)):  # footpaths
        pts = np.cumsum(rng.normal(0, 40 * k, (6, 2)), axis=0) + [w * rng.random(), h * rng.random()]
        cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], False, (190, 175, 140), max(1, int(2.5 * k)), cv2.LINE_AA, 4)
    if rng.random() < 0.6:  # a sports pitch
        th = rng.uniform(0, math.pi)
        q = _Painter(img, k, rng)
        cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
        cv2.fillConvexPoly(img, q.rect(cx, cy, 110, 75, th), (160, 90, 70), cv2.LINE_AA, 4)
        cv2.fillConvexPoly(img, q.rect(cx, cy, 100, 64, th), (70, 140, 60), cv2.LINE_AA, 4)
        cv2.polylines(img, [q.rect(cx, cy, 90, 56, th)], True, (230, 230, 230), 1, cv2.LINE_AA, 4)
    return img
