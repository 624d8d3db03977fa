"""Generated textures (backgrounds, occluder fills) and shapes (ellipses, convex polygons, patches) rasterised on the
device, batched, with the occluders placed to cover a drawn share of the hand."""
import math

import torch
import torch.nn.functional as F


def uniform(lo, hi, shape, g, device):
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=device)


def pixel_grid(size, device):
    """u (1, 1, S) and v (1, S, 1) pixel-centre coordinates, broadcasting to (B, S, S)."""
    r = torch.arange(size, dtype=torch.float32, device=device)
    return r.view(1, 1, size), r.view(1, size, 1)


def noise_texture(n, size, g, device):
    """(n, 3, S, S) smooth random colour texture in [0, 1]: three octaves with random weights, summed at a
    quarter of the resolution and upsampled once."""
    low = max(size // 4, 8)
    out = torch.zeros(n, 3, low, low, device=device)
    weights = torch.rand(n, 3, generator=g, device=device) + 0.05
    for octave, cells in enumerate((3, 10, low)):
        grid = torch.rand(n, 3, cells, cells, generator=g, device=device)
        out += weights[:, octave, None, None, None] * F.interpolate(grid, size=(low, low), mode="bilinear",
                                                                   align_corners=False)
    out = out / weights.sum(1)[:, None, None, None]
    return F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)


def gradient_texture(n, size, g, device):
    """(n, 3, S, S) linear ramp between two random colours in a random direction."""
    u, v = pixel_grid(size, device)
    angle = uniform(0, 2 * math.pi, (n,), g, device)[:, None, None]
    ramp = (u - size / 2) * torch.cos(angle) + (v - size / 2) * torch.sin(angle)   # (n, S, S)
    ramp = (ramp / (size * 0.71) + 0.5).clamp(0, 1)[:, None]
    low, high = torch.rand(2, n, 3, 1, 1, generator=g, device=device)
    return low + ramp * (high - low)


def clutter_texture(n, size, g, device):
    """(n, 3, S, S) a gradient under four random shapes of random colours."""
    out = gradient_texture(n, size, g, device)
    for _ in range(4):
        centre = torch.rand(n, 2, generator=g, device=device) * size
        inside, _kind = random_shapes(centre, uniform(0.08, 0.3, (n,), g, device) * size, size, g)
        out = torch.where(inside[:, None], torch.rand(n, 3, 1, 1, generator=g, device=device), out)
    return out


# --- shapes: rasterised on the device, batched ------------------------------------------------------------

MAX_VERTICES = 6


def ellipse_masks(centre, a, b, theta, size):
    """(N, S, S) bool: pixels inside ellipses of centre (N, 2), semi-axes a, b (N,), turned by theta (N,).

    With x = dx cos + dy sin, y = dy cos - dx sin: (x/a)^2 + (y/b)^2 <= 1, written as a quadratic in the
    pixel offsets dx (N, 1, S), dy (N, S, 1) so that only the final sums are full-size.
    """
    u, v = pixel_grid(size, centre.device)
    col = lambda t: t[:, None, None]
    dx, dy = u - col(centre[:, 0]), v - col(centre[:, 1])
    cos, sin = torch.cos(theta), torch.sin(theta)
    qa, qc = (cos / a) ** 2 + (sin / b) ** 2, (sin / a) ** 2 + (cos / b) ** 2
    qb = 2 * cos * sin * (a ** -2 - b ** -2)
    return col(qa) * dx ** 2 + col(qc) * dy ** 2 + (col(qb) * dx) * dy <= 1.0


def polygon_masks(vertices, size):
    """(N, S, S) bool: pixels inside convex polygons (N, V, 2), vertices counter-clockwise in (u, v) algebra
    (clockwise on screen); a pixel is inside when it is left of every edge. Zero-length edges pass all."""
    u, v = pixel_grid(size, vertices.device)
    col = lambda t: t[:, None, None]
    px, py = vertices[..., 0], vertices[..., 1]                                # (N, V)
    inside = torch.ones(len(vertices), size, size, dtype=torch.bool, device=vertices.device)
    for i in range(vertices.shape[1]):
        j = (i + 1) % vertices.shape[1]
        ex, ey = px[:, j] - px[:, i], py[:, j] - py[:, i]
        inside &= col(ex) * v - col(ex * py[:, i]) >= col(ey) * u - col(ey * px[:, i])  # cross >= 0
    return inside


def random_shapes(centre, radius, size, g):
    """One random shape per row, centred at ``centre`` (N, 2) with area about pi * radius^2 (N,).

    Returns (inside (N, S, S) bool, kind (N,) long): kind 0 ellipse, 1 convex polygon of 3-6 vertices,
    2 rectangular patch. Polygon vertices lie on the ellipse at increasing angles, so polygons are convex.
    """
    n, device = centre.shape[0], centre.device
    kind = torch.randint(0, 3, (n,), generator=g, device=device)
    aspect = torch.exp(uniform(-0.5, 0.5, (n,), g, device))
    a, b = radius * aspect, radius / aspect                                    # semi-axes (N,)
    theta = uniform(0, math.pi, (n,), g, device)
    # Rows with fewer than MAX_VERTICES vertices repeat their last one.
    count = torch.where(kind == 2, 4, torch.randint(3, MAX_VERTICES + 1, (n,), generator=g, device=device))
    k = torch.minimum(torch.arange(MAX_VERTICES, device=device)[None], count[:, None] - 1)   # (N, V)
    step = 2 * math.pi / count[:, None]
    jitter = torch.where(kind[:, None] == 2, 0.0, uniform(-0.35, 0.35, (n, MAX_VERTICES), g, device))
    start = torch.where(kind == 2, math.pi / 4, uniform(0, 2 * math.pi, (n,), g, device))
    phi = start[:, None] + step * (k + jitter.gather(1, k))                   # (N, V) increasing
    x, y = a[:, None] * torch.cos(phi), b[:, None] * torch.sin(phi)            # shape frame
    cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
    vertices = centre[:, None] + torch.stack([x * cos - y * sin, x * sin + y * cos], -1)   # (N, V, 2) pixels
    inside = torch.where((kind == 0)[:, None, None], ellipse_masks(centre, a, b, theta, size),
                         polygon_masks(vertices, size))
    return inside, kind


def joint_discs(uv, visible, size):
    """(B, S, S) bool: discs around the visible joints, a stand-in hand region where no mask exists."""
    u, v = pixel_grid(size, uv.device)
    far = torch.where(visible, 0.0, 1e9)                                       # (B, 21)
    span = (uv.amax(1) - uv.amin(1)).norm(dim=-1)                              # (B,)
    radius2 = ((0.07 * span + 2.0) ** 2)[:, None, None]
    d2 = torch.full((uv.shape[0], size, size), 1e12, device=uv.device)
    for j in range(uv.shape[1]):
        du2 = (u - uv[:, j, 0, None, None]) ** 2 + far[:, j, None, None]          # (B, 1, S)
        d2 = torch.minimum(d2, du2 + (v - uv[:, j, 1, None, None]) ** 2)
    return d2 <= radius2


def place_occluders(hand, target, centres, g):
    """Shapes centred at ``centres`` (R, M, 2) sized to cover ``target`` (R,) of ``hand`` (R, S, S) bool.

    Each shape aims at 60 % of the coverage still missing; its radius uses the efficiency (hand pixels
    gained per shape pixel) of the previous shape, low where the hand is thin or scattered. Returns
    (shapes: list of M (R, S, S) bool, kinds (R, M), fractions (R, M) of the hand covered by the first m+1).
    """
    r, size, dev = hand.shape[0], hand.shape[-1], hand.device
    area = hand.flatten(1).sum(1).float()
    union = torch.zeros_like(hand)
    frac, efficiency = torch.zeros(r, device=dev), torch.full((r,), 0.5, device=dev)
    shapes, kinds, fractions = [], [], []
    for m in range(centres.shape[1]):
        want = (target - frac).clamp(min=0.02) * 0.6 * area                    # hand pixels to add
        radius = torch.sqrt(want / (efficiency * math.pi)) * uniform(0.8, 1.2, (r,), g, dev)
        inside, kind = random_shapes(centres[:, m], radius.clamp(min=1.0), size, g)
        union = union | inside
        new_frac = (union & hand).flatten(1).sum(1) / area
        efficiency = ((new_frac - frac) * area / inside.flatten(1).sum(1).clamp(min=1)).clamp(0.05, 1.0)
        frac = new_frac
        shapes.append(inside)
        kinds.append(kind)
        fractions.append(frac)
    return shapes, torch.stack(kinds, 1), torch.stack(fractions, 1)
