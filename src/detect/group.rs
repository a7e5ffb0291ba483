//! Grouping of overlapping detections, with OpenCV's `groupRectangles` semantics: windows are
//! clustered by similarity (the transitive closure, classes numbered in order of first
//! appearance), each cluster with more than `min_neighbors` members becomes its averaged
//! rectangle, and a cluster's rectangle is dropped when it lies inside a stronger one.

/// A rectangle in image pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

/// Two rectangles are alike when every edge is within `eps` times their mean smaller side. In
/// i64, so that no rectangle, however far out, overflows.
fn similar(a: &Rect, b: &Rect, eps: f64) -> bool {
    let delta = eps * (a.w.min(b.w) as i64 + a.h.min(b.h) as i64) as f64 * 0.5;
    let close = |p: i64, q: i64| ((p - q) as f64).abs() <= delta;
    let (ax, ay, bx, by) = (a.x as i64, a.y as i64, b.x as i64, b.y as i64);
    close(ax, bx) && close(ay, by) && close(ax + a.w as i64, bx + b.w as i64) && close(ay + a.h as i64, by + b.h as i64)
}

/// Class labels for `rects` under the similarity relation's transitive closure, numbered in
/// order of first appearance, as OpenCV's `partition` numbers them. OpenCV compares every pair,
/// which a cascade that accepts nearly every window turns into hours; the classes depend only
/// on which pairs are alike, so comparing just the pairs near enough to be gives the same
/// labels. Alike rectangles are within `eps * (w + h) / 2` of each other in x and y, measured
/// from either (for `eps` >= 0): each rectangle is compared with those in that box with a
/// larger (x, y).
fn partition(rects: &[Rect], eps: f64) -> (Vec<usize>, usize) {
    let n = rects.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (rects[i].x, rects[i].y));
    // Runs of `order` with one x: (x, start, end).
    let mut columns: Vec<(i32, usize, usize)> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        match columns.last_mut() {
            Some(c) if c.0 == rects[i].x => c.2 = k + 1,
            _ => columns.push((rects[i].x, k, k + 1)),
        }
    }
    let mut parent: Vec<usize> = (0..n).collect();
    let find = |parent: &mut [usize], mut i: usize| {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    };
    for (c, &(x, start, end)) in columns.iter().enumerate() {
        for k in start..end {
            let i = order[k];
            let a = &rects[i];
            let reach = eps * (a.w as f64 + a.h as f64) * 0.5;
            let (far_x, low_y, high_y) = (x as f64 + reach, a.y as f64 - reach, a.y as f64 + reach);
            for &(bx, b_start, b_end) in columns[c..].iter().take_while(|col| col.0 as f64 <= far_x) {
                // In its own column, only those after it; in the others, from the box's top.
                let first = if bx == x { k + 1 } else { b_start + order[b_start..b_end].partition_point(|&j| (rects[j].y as f64) < low_y) };
                for &j in order[first..b_end].iter().take_while(|&&j| rects[j].y as f64 <= high_y) {
                    if similar(a, &rects[j], eps) {
                        let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
                        parent[ri.max(rj)] = ri.min(rj);
                    }
                }
            }
        }
    }
    number_classes(n, |i| find(&mut parent, i))
}

/// Class labels for `n` items given each one's root in a union-find forest, numbered in order
/// of first appearance, and the number of classes.
fn number_classes(n: usize, mut root_of: impl FnMut(usize) -> usize) -> (Vec<usize>, usize) {
    let mut class_of_root = vec![usize::MAX; n];
    let mut classes = 0;
    let labels = (0..n)
        .map(|i| {
            let root = root_of(i);
            if class_of_root[root] == usize::MAX {
                class_of_root[root] = classes;
                classes += 1;
            }
            class_of_root[root]
        })
        .collect();
    (labels, classes)
}

/// OpenCV's cvRound (saturate_cast<int> of a double): to nearest, ties to even.
fn round(v: f64) -> i32 {
    v.round_ties_even() as i32
}

/// OpenCV's `groupRectangles(rects, min_neighbors, eps)`. With `min_neighbors` 0 the windows
/// come back untouched.
pub fn group_rectangles(rects: &[Rect], min_neighbors: usize, eps: f64) -> Vec<Rect> {
    if min_neighbors == 0 || rects.is_empty() {
        return rects.to_vec();
    }
    let (labels, classes) = partition(rects, eps);
    let mut sums = vec![[0i64; 4]; classes];
    let mut counts = vec![0usize; classes];
    for (r, &c) in rects.iter().zip(&labels) {
        sums[c][0] += r.x as i64;
        sums[c][1] += r.y as i64;
        sums[c][2] += r.w as i64;
        sums[c][3] += r.h as i64;
        counts[c] += 1;
    }
    // The mean is taken in f32, as OpenCV does: sum as f32 times (1/n as f32), ties to even.
    let means: Vec<Rect> = sums
        .iter()
        .zip(&counts)
        .map(|(s, &n)| {
            let k = 1.0f32 / n as f32;
            let mean = |v: i64| (v as f32 * k).round_ties_even() as i32;
            Rect { x: mean(s[0]), y: mean(s[1]), w: mean(s[2]), h: mean(s[3]) }
        })
        .collect();
    // Only clusters with more than `min_neighbors` members are kept or can hide another.
    let kept: Vec<usize> = (0..classes).filter(|&c| counts[c] > min_neighbors).collect();
    let mut out = Vec::new();
    for &i in &kept {
        let (r1, n1) = (means[i], counts[i]);
        // Dropped when inside (with an eps margin) a cluster that is stronger, or when this
        // one is weak (fewer than 3 members). In i64, as in `similar`.
        let inside_stronger = kept.iter().any(|&j| {
            let (r2, n2) = (means[j], counts[j]);
            let dx = round(r2.w as f64 * eps) as i64;
            let dy = round(r2.h as f64 * eps) as i64;
            let (x1, y1, x2, y2) = (r1.x as i64, r1.y as i64, r2.x as i64, r2.y as i64);
            j != i && x1 >= x2 - dx && y1 >= y2 - dy && x1 + r1.w as i64 <= x2 + r2.w as i64 + dx && y1 + r1.h as i64 <= y2 + r2.h as i64 + dy && (n2 > n1.max(3) || n1 < 3)
        });
        if !inside_stronger {
            out.push(r1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// OpenCV's `partition` as it is written: every pair compared, classes by first appearance.
    fn all_pairs(rects: &[Rect], eps: f64) -> (Vec<usize>, usize) {
        let n = rects.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(parent: &[usize], mut i: usize) -> usize {
            while parent[i] != i {
                i = parent[i];
            }
            i
        }
        for i in 0..n {
            for j in 0..n {
                if i != j && similar(&rects[i], &rects[j], eps) {
                    let (ri, rj) = (find(&parent, i), find(&parent, j));
                    parent[ri] = rj;
                }
            }
        }
        number_classes(n, |i| find(&parent, i))
    }

    #[test]
    fn comparing_only_near_pairs_gives_opencvs_classes() {
        let mut rng = Rng::new(7);
        for round in 0..200 {
            // Windows around a few centres at a few sizes, on a coarse grid so that positions
            // repeat and edges sit exactly at the similarity limit.
            let centres: Vec<(i32, i32)> = (0..1 + rng.below(5)).map(|_| (rng.below(200) as i32, rng.below(200) as i32)).collect();
            let rects: Vec<Rect> = (0..rng.below(300))
                .map(|_| {
                    let (cx, cy) = centres[rng.below(centres.len())];
                    let size = 20 + 5 * rng.below(8) as i32;
                    let jitter = |rng: &mut Rng| 2 * rng.below(16) as i32 - 15;
                    Rect { x: cx + jitter(&mut rng), y: cy + jitter(&mut rng), w: size, h: size + rng.below(3) as i32 }
                })
                .collect();
            for eps in [0.2, 0.05, 0.5] {
                assert_eq!(partition(&rects, eps), all_pairs(&rects, eps), "round {round}, eps {eps}");
            }
        }
    }

    #[test]
    fn rectangles_far_out_do_not_overflow() {
        let far = Rect { x: 1 << 30, y: i32::MIN, w: i32::MAX, h: i32::MAX };
        let near = Rect { x: -5, y: 0, w: 20, h: 20 };
        let rects = [far, far, far, far, near, near, near, near];
        assert_eq!(group_rectangles(&rects, 3, 0.2), vec![far, near]);
    }
}
