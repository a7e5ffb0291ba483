//! Grouping of overlapping detections, with OpenCV's `groupRectangles` semantics: windows are
//! clustered by similarity (union-find over all pairs, classes numbered in order of first
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

/// Two rectangles are alike when every edge is within `eps` times their mean smaller side.
fn similar(a: &Rect, b: &Rect, eps: f64) -> bool {
    let delta = eps * (a.w.min(b.w) + a.h.min(b.h)) as f64 * 0.5;
    let close = |p: i32, q: i32| ((p - q) as f64).abs() <= delta;
    close(a.x, b.x) && close(a.y, b.y) && close(a.x + a.w, b.x + b.w) && close(a.y + a.h, b.y + b.h)
}

/// Class labels for `rects` under the similarity relation's transitive closure, numbered in
/// the order OpenCV's `partition` numbers them (union by rank, then first appearance).
fn partition(rects: &[Rect], eps: f64) -> (Vec<usize>, usize) {
    let n = rects.len();
    let mut parent: Vec<isize> = vec![-1; n];
    let mut rank = vec![0i64; n];
    let find = |parent: &[isize], mut i: usize| {
        while parent[i] >= 0 {
            i = parent[i] as usize;
        }
        i
    };
    let compress = |parent: &mut [isize], mut i: usize, root: usize| {
        while parent[i] >= 0 {
            let next = parent[i] as usize;
            parent[i] = root as isize;
            i = next;
        }
    };
    for i in 0..n {
        let mut root = find(&parent, i);
        for j in 0..n {
            if i == j || !similar(&rects[i], &rects[j], eps) {
                continue;
            }
            let root2 = find(&parent, j);
            if root2 != root {
                if rank[root] > rank[root2] {
                    parent[root2] = root as isize;
                } else {
                    parent[root] = root2 as isize;
                    rank[root2] += (rank[root] == rank[root2]) as i64;
                    root = root2;
                }
                compress(&mut parent, j, root);
                compress(&mut parent, i, root);
            }
        }
    }
    let mut class_of_root = vec![usize::MAX; n];
    let mut classes = 0;
    let labels = (0..n)
        .map(|i| {
            let root = find(&parent, i);
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
    let mut out = Vec::new();
    for i in 0..classes {
        let (r1, n1) = (means[i], counts[i]);
        if n1 <= min_neighbors {
            continue;
        }
        // Dropped when inside (with an eps margin) a cluster that is stronger, or when this
        // one is weak (fewer than 3 members).
        let inside_stronger = (0..classes).any(|j| {
            let (r2, n2) = (means[j], counts[j]);
            if j == i || n2 <= min_neighbors {
                return false;
            }
            let dx = round(r2.w as f64 * eps);
            let dy = round(r2.h as f64 * eps);
            r1.x >= r2.x - dx && r1.y >= r2.y - dy && r1.x + r1.w <= r2.x + r2.w + dx && r1.y + r1.h <= r2.y + r2.h + dy && (n2 > n1.max(3) || n1 < 3)
        });
        if !inside_stronger {
            out.push(r1);
        }
    }
    out
}
