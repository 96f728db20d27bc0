"""Space-filling branching trees (pulmonary arteries with their bronchi, and veins) grown into the lobes.

Each branch heads for the centroid of the lung points it supplies; its territory is then split in two
along its longest axis and the halves get daughter branches whose radii follow Murray's law
(r^3 = r1^3 + r2^3, flow proportional to territory size). This is the territory-splitting idea of
Kitaoka et al. (J Appl Physiol 1999) and gives tapering, dichotomous trees that fill each lobe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Segments", "bronchovascular_tree", "grow_tree"]


@dataclass(frozen=True)
class Segments:
    """Straight tube pieces: start and end points (N, 3) in the body frame (mm) and radii (N,) in mm."""

    start: np.ndarray
    end: np.ndarray
    radius: np.ndarray

    @staticmethod
    def concat(parts: list[Segments]) -> Segments:
        parts = [p for p in parts if len(p.radius)]
        if not parts:
            return Segments(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
        return Segments(np.concatenate([p.start for p in parts]), np.concatenate([p.end for p in parts]),
                        np.concatenate([p.radius for p in parts]))

    def where(self, keep: np.ndarray) -> Segments:
        return Segments(self.start[keep], self.end[keep], self.radius[keep])

    def __len__(self) -> int:
        return len(self.radius)


@dataclass(frozen=True)
class _Skeleton:
    start: np.ndarray
    end: np.ndarray
    radius: np.ndarray
    start_normal: np.ndarray
    end_normal: np.ndarray


def _perpendicular(normal: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """`normal` made perpendicular to `direction` (parallel transport along a branch)."""
    candidate = normal - (normal @ direction) * direction
    length = np.linalg.norm(candidate)
    if length < 1e-6:
        fallback = np.array([0.0, 0.0, 1.0]) if abs(direction[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        candidate = np.cross(direction, fallback)
        length = np.linalg.norm(candidate)
    return candidate / length


def grow_tree(root: np.ndarray, territories: list[np.ndarray], root_radius: float, *, min_radius: float = 0.5,
              first_fraction: float = 0.5, fraction: float = 0.5, root_normal: np.ndarray | None = None
              ) -> _Skeleton:
    """Grow one tree from `root` into each territory (an (n, 3) point cloud per lobe).

    Radii scale as root_radius * (n / N)^(1/3) with N all points of all territories, so a lobe's first
    branch is already thinner than the root. Branches stop when thinner than `min_radius` or when
    their territory is a single point, ending at that point.
    """
    total = sum(len(points) for points in territories)
    starts, ends, radii, start_normals, end_normals = [], [], [], [], []
    normal0 = np.array([0.0, 0.0, 1.0]) if root_normal is None else np.asarray(root_normal, dtype=float)
    stack = [(np.asarray(root, dtype=float), points, normal0, True) for points in territories if len(points)]
    while stack:
        start, points, normal, first = stack.pop()
        count = len(points)
        radius = root_radius * (count / total) ** (1.0 / 3.0)
        centroid = points.mean(axis=0)
        offset = centroid - start
        distance = float(np.linalg.norm(offset))
        terminal = count == 1 or radius < min_radius or distance < 1.0
        if terminal:
            end = centroid if distance >= 1.0 else start + normal
        else:
            length = max(2.0, (first_fraction if first else fraction) * distance)
            end = start + offset / distance * length
        direction = (end - start) / max(float(np.linalg.norm(end - start)), 1e-9)
        end_normal = _perpendicular(normal, direction)
        starts.append(start)
        ends.append(end)
        radii.append(max(radius, min_radius * 0.8))
        start_normals.append(normal)
        end_normals.append(end_normal)
        if terminal:
            continue
        centred = points - centroid
        _, vectors = np.linalg.eigh(centred.T @ centred)
        projection = centred @ vectors[:, -1]
        order = np.argsort(projection, kind="stable")
        half = count // 2
        stack.append((end, points[order[:half]], end_normal, False))
        stack.append((end, points[order[half:]], end_normal, False))
    return _Skeleton(np.array(starts), np.array(ends), np.array(radii), np.array(start_normals),
                     np.array(end_normals))


def bronchovascular_tree(root: np.ndarray, root_normal: np.ndarray, root_offset: float,
                         territories: list[np.ndarray], root_radius: float, *, min_radius: float = 0.45,
                         min_airway_radius: float = 1.0) -> tuple[Segments, Segments, Segments]:
    """Arteries and bronchi running side by side (bronchovascular bundles) along one skeleton.

    The artery runs on one side of the skeleton and the bronchus on the other, touching; at the root
    they are `root_offset` mm apart (pulmonary artery and main bronchus entering the hilum).
    Returns (arteries, bronchial walls, bronchial lumens); bronchi stop below `min_airway_radius`.
    """
    skeleton = grow_tree(root, territories, root_radius, min_radius=min_radius, root_normal=root_normal)
    lumen = 0.85 * skeleton.radius
    wall = lumen + 0.2 * skeleton.radius + 0.25
    separation = 0.5 * (skeleton.radius + wall) + 0.2
    at_root = np.all(np.isclose(skeleton.start, root), axis=1)
    start_offset = np.where(at_root, root_offset, separation)[:, None]
    arteries = Segments(skeleton.start + start_offset * skeleton.start_normal,
                        skeleton.end + separation[:, None] * skeleton.end_normal, skeleton.radius)
    airway_start = skeleton.start - start_offset * skeleton.start_normal
    airway_end = skeleton.end - separation[:, None] * skeleton.end_normal
    keep = lumen >= min_airway_radius
    walls = Segments(airway_start[keep], airway_end[keep], wall[keep])
    lumens = Segments(airway_start[keep], airway_end[keep], lumen[keep])
    return arteries, walls, lumens
