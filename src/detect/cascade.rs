//! OpenCV Haar cascades from XML, in both of OpenCV's formats:
//! - the current one: `<cascade>` with `stages/_/weakClassifiers/_/{internalNodes,leafValues}`
//!   and a shared `features` list;
//! - the old one (`<haarcascade_*>` with `type_id="opencv-haar-classifier"`): `stages/_/trees/_/_`
//!   nodes that carry their own feature, threshold and `left_val`/`left_node` children.
//!
//! Both become one [`Cascade`]. Every error names the element path where the file went wrong.
//! What the detectors rely on is checked here, as the file is read: every number finite and
//! bounded, every index integral and in range, every rectangle inside the window. A hostile
//! file is an error, not a hang, a panic or a detection of nothing in particular.

use crate::error::quote_prefix;
use roxmltree::{Document, Node as XmlNode};
use std::path::Path;

/// The largest detection window accepted, either side. OpenCV's own cascades use 14 to 60
/// pixels; the bound keeps every rectangle and offset small however hostile the file.
pub const MAX_WINDOW: u32 = 512;

/// The largest magnitude accepted for thresholds, leaf values and rectangle weights. OpenCV's
/// own cascades stay within 3,238 (a leaf of the Russian licence-plate cascade); a NaN or
/// infinity would make every window pass or fail, and the GPU's fixed point needs finite values.
pub const MAX_MAGNITUDE: f64 = 1e6;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {path}: {problem}")]
pub struct CascadeError {
    pub file: String,
    /// Element path, such as `cascade/stages/_[3]/weakClassifiers/_[7]/internalNodes`.
    pub path: String,
    pub problem: String,
}

/// A rectangle of a Haar feature in window coordinates, with its weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightedRect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub weight: f32,
}

impl WeightedRect {
    /// Whether the rectangle lies inside a window of `(width, height)`: tilted rectangles extend
    /// w + h down and h to the left of x, upright ones w and h. In u64, so that no sum wraps
    /// whatever the coordinates.
    pub fn fits(&self, tilted: bool, (width, height): (u32, u32)) -> bool {
        let (x, y, w, h) = (self.x as u64, self.y as u64, self.w as u64, self.h as u64);
        let bottom = if tilted { y + w + h } else { y + h };
        x + w <= width as u64 && bottom <= height as u64 && (!tilted || x >= h)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Feature {
    pub rects: Vec<WeightedRect>,
    /// Rectangles rotated by 45 degrees (read from the tilted integral image).
    pub tilted: bool,
}

/// One split of a weak classifier's tree. `left`/`right` > 0 name another node of the same
/// tree; <= 0 name leaf `-left`/`-right`. The left branch is taken when the normalised feature
/// value is below `threshold`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Split {
    pub feature: u32,
    pub threshold: f32,
    pub left: i32,
    pub right: i32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tree {
    pub splits: Vec<Split>,
    pub leaves: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    pub threshold: f32,
    pub trees: Vec<Tree>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cascade {
    /// Detection window width and height.
    pub window: (u32, u32),
    pub stages: Vec<Stage>,
    pub features: Vec<Feature>,
}

/// Walks the document, keeping the element path for error messages.
struct Reader<'a> {
    file: &'a str,
}

impl Reader<'_> {
    fn err(&self, path: &str, problem: impl Into<String>) -> CascadeError {
        CascadeError { file: self.file.to_string(), path: path.to_string(), problem: problem.into() }
    }

    fn child<'d, 'i>(&self, node: XmlNode<'d, 'i>, path: &str, name: &str) -> Result<(XmlNode<'d, 'i>, String), CascadeError> {
        node.children().find(|c| c.has_tag_name(name)).map(|c| (c, format!("{path}/{name}"))).ok_or_else(|| self.err(path, format!("missing <{name}>")))
    }

    /// The `<_>` items of a list element, with their paths.
    fn items<'d, 'i>(&self, node: XmlNode<'d, 'i>, path: &str) -> Vec<(XmlNode<'d, 'i>, String)> {
        node.children().filter(|c| c.has_tag_name("_")).enumerate().map(|(i, c)| (c, format!("{path}/_[{i}]"))).collect()
    }

    fn parse<T: std::str::FromStr>(&self, token: &str, path: &str) -> Result<T, CascadeError> {
        token.parse::<T>().map_err(|_| self.err(path, format!("{} is not a number of the expected kind", quote_prefix(token, 40))))
    }

    fn numbers<T: std::str::FromStr>(&self, node: XmlNode, path: &str) -> Result<Vec<T>, CascadeError> {
        node.text().unwrap_or("").split_ascii_whitespace().map(|t| self.parse(t, path)).collect()
    }

    /// `v` when it is finite and within [`MAX_MAGNITUDE`].
    fn finite<T: Into<f64> + Copy + std::fmt::Display + std::fmt::LowerExp>(&self, v: T, path: &str, what: &str) -> Result<T, CascadeError> {
        let x: f64 = v.into();
        if !x.is_finite() {
            return Err(self.err(path, format!("{what} is {v}; every number must be finite")));
        }
        if x.abs() > MAX_MAGNITUDE {
            return Err(self.err(path, format!("{what} {v:e} is beyond +-{MAX_MAGNITUDE:e}, far outside any trained cascade")));
        }
        Ok(v)
    }

    /// A tree index stored as a float, as the current format stores them beside the thresholds:
    /// a cast alone would turn 1.5 into 1, NaN into 0 and 1e20 into i32::MAX.
    fn index(&self, v: f64, path: &str, what: &str) -> Result<i32, CascadeError> {
        if v.fract() != 0.0 || !(i32::MIN as f64..=i32::MAX as f64).contains(&v) {
            return Err(self.err(path, format!("{what} {v} is not an integral index")));
        }
        Ok(v as i32)
    }

    /// A window side, from 3 (a pixel inside the variance border) to [`MAX_WINDOW`].
    fn side(&self, v: u32, path: &str) -> Result<u32, CascadeError> {
        if !(3..=MAX_WINDOW).contains(&v) {
            return Err(self.err(path, format!("window side {v} is outside 3..={MAX_WINDOW}")));
        }
        Ok(v)
    }

    fn number<T: std::str::FromStr>(&self, node: XmlNode, path: &str) -> Result<T, CascadeError> {
        let mut values = self.numbers::<T>(node, path)?;
        match values.len() {
            1 => Ok(values.remove(0)),
            n => Err(self.err(path, format!("expected one number, found {n}"))),
        }
    }

    fn child_number<T: std::str::FromStr>(&self, node: XmlNode, path: &str, name: &str) -> Result<T, CascadeError> {
        let (c, p) = self.child(node, path, name)?;
        self.number(c, &p)
    }

    fn feature(&self, node: XmlNode, path: &str, window: (u32, u32)) -> Result<Feature, CascadeError> {
        let (rects_node, rects_path) = self.child(node, path, "rects")?;
        let mut rects = Vec::new();
        for (r, rp) in self.items(rects_node, &rects_path) {
            let tokens: Vec<&str> = r.text().unwrap_or("").split_ascii_whitespace().collect();
            let [x, y, w, h, weight] = tokens[..] else {
                return Err(self.err(&rp, format!("a rectangle is 5 numbers (x y w h weight), found {}", tokens.len())));
            };
            // In f64, so that 4294967295 is not rounded to a float that saturates on the cast.
            let coordinate = |t: &str| -> Result<u32, CascadeError> {
                let v: f64 = self.parse(t, &rp)?;
                if v.fract() != 0.0 || !(0.0..=MAX_WINDOW as f64).contains(&v) {
                    return Err(self.err(&rp, format!("rectangle coordinate {} is not an integer in 0..={MAX_WINDOW}", quote_prefix(t, 40))));
                }
                Ok(v as u32)
            };
            let weight = self.finite(self.parse::<f32>(weight, &rp)?, &rp, "the rectangle weight")?;
            rects.push(WeightedRect { x: coordinate(x)?, y: coordinate(y)?, w: coordinate(w)?, h: coordinate(h)?, weight });
        }
        if rects.is_empty() || rects.len() > 3 {
            return Err(self.err(&rects_path, format!("a feature has 1 to 3 rectangles, found {}", rects.len())));
        }
        let tilted = match node.children().find(|c| c.has_tag_name("tilted")) {
            Some(t) => self.number::<u32>(t, &format!("{path}/tilted"))? != 0,
            None => false,
        };
        if let Some(r) = rects.iter().find(|r| !r.fits(tilted, window)) {
            return Err(self.err(&rects_path, format!("rectangle {r:?} leaves the {}x{} window", window.0, window.1)));
        }
        Ok(Feature { rects, tilted })
    }

    fn current(&self, root: XmlNode, path: &str) -> Result<Cascade, CascadeError> {
        let text = |name: &str| -> Result<String, CascadeError> {
            let (n, p) = self.child(root, path, name)?;
            n.text().map(|t| t.trim().to_string()).ok_or_else(|| self.err(&p, "empty"))
        };
        if text("stageType")? != "BOOST" || text("featureType")? != "HAAR" {
            return Err(self.err(path, "only BOOST stages of HAAR features are supported (not LBP or HOG cascades)"));
        }
        let side = |name: &str| self.side(self.child_number::<u32>(root, path, name)?, &format!("{path}/{name}"));
        let window = (side("width")?, side("height")?);
        let (features_node, features_path) = self.child(root, path, "features")?;
        let features = self.items(features_node, &features_path).into_iter().map(|(f, p)| self.feature(f, &p, window)).collect::<Result<Vec<_>, _>>()?;
        let (stages_node, stages_path) = self.child(root, path, "stages")?;
        let mut stages = Vec::new();
        for (s, sp) in self.items(stages_node, &stages_path) {
            let threshold = self.finite(self.child_number::<f32>(s, &sp, "stageThreshold")?, &format!("{sp}/stageThreshold"), "the stage threshold")?;
            let (weak, weak_path) = self.child(s, &sp, "weakClassifiers")?;
            let mut trees = Vec::new();
            for (w, wp) in self.items(weak, &weak_path) {
                let (nodes, np) = self.child(w, &wp, "internalNodes")?;
                let values: Vec<f64> = self.numbers(nodes, &np)?;
                if values.is_empty() || !values.len().is_multiple_of(4) {
                    return Err(self.err(&np, format!("expected 4 numbers per split (left right feature threshold), found {}", values.len())));
                }
                let (leaf_node, lp) = self.child(w, &wp, "leafValues")?;
                let leaves = self.numbers::<f32>(leaf_node, &lp)?.into_iter().map(|l| self.finite(l, &lp, "a leaf value")).collect::<Result<Vec<_>, _>>()?;
                let split = |(k, v): (usize, &[f64])| -> Result<Split, CascadeError> {
                    let index = |j: usize, what: &str| self.index(v[j], &np, &format!("split {k}'s {what}"));
                    let feature = index(2, "feature")?;
                    let feature = u32::try_from(feature).map_err(|_| self.err(&np, format!("split {k} uses feature {feature}")))?;
                    // OpenCV reads the threshold as a double and keeps it as a float.
                    let threshold = self.finite(v[3], &np, &format!("split {k}'s threshold"))? as f32;
                    Ok(Split { left: index(0, "left")?, right: index(1, "right")?, feature, threshold })
                };
                let splits = values.chunks(4).enumerate().map(split).collect::<Result<Vec<_>, _>>()?;
                trees.push(self.checked_tree(Tree { splits, leaves }, features.len(), &wp)?);
            }
            if trees.is_empty() {
                return Err(self.err(&weak_path, "a stage without weak classifiers"));
            }
            stages.push(Stage { threshold, trees });
        }
        Ok(Cascade { window, stages, features })
    }

    fn old(&self, root: XmlNode, path: &str) -> Result<Cascade, CascadeError> {
        let (size, size_path) = self.child(root, path, "size")?;
        let window = match self.numbers::<u32>(size, &size_path)?[..] {
            [w, h] => (self.side(w, &size_path)?, self.side(h, &size_path)?),
            _ => return Err(self.err(&size_path, "expected the window size as 2 numbers")),
        };
        let mut features = Vec::new();
        let mut stages = Vec::new();
        let (stages_node, stages_path) = self.child(root, path, "stages")?;
        for (s, sp) in self.items(stages_node, &stages_path) {
            let threshold = self.finite(self.child_number::<f32>(s, &sp, "stage_threshold")?, &format!("{sp}/stage_threshold"), "the stage threshold")?;
            let (trees_node, tp) = self.child(s, &sp, "trees")?;
            let mut trees = Vec::new();
            for (t, tpath) in self.items(trees_node, &tp) {
                let mut tree = Tree { splits: Vec::new(), leaves: Vec::new() };
                let nodes = self.items(t, &tpath);
                for (n, np) in &nodes {
                    let (f, fp) = self.child(*n, np, "feature")?;
                    features.push(self.feature(f, &fp, window)?);
                    let mut side = |val: &str, node: &str| -> Result<i32, CascadeError> {
                        if let Some(v) = n.children().find(|c| c.has_tag_name(val)) {
                            let vp = format!("{np}/{val}");
                            tree.leaves.push(self.finite(self.number(v, &vp)?, &vp, "a leaf value")?);
                            Ok(-(tree.leaves.len() as i32 - 1))
                        } else {
                            self.child_number::<i32>(*n, np, node)
                        }
                    };
                    let left = side("left_val", "left_node")?;
                    let right = side("right_val", "right_node")?;
                    let threshold = self.finite(self.child_number::<f32>(*n, np, "threshold")?, &format!("{np}/threshold"), "the split threshold")?;
                    tree.splits.push(Split { feature: features.len() as u32 - 1, threshold, left, right });
                }
                trees.push(self.checked_tree(tree, features.len(), &tpath)?);
            }
            if trees.is_empty() {
                return Err(self.err(&tp, "a stage without trees"));
            }
            stages.push(Stage { threshold, trees });
        }
        Ok(Cascade { window, stages, features })
    }

    fn checked_tree(&self, tree: Tree, features: usize, path: &str) -> Result<Tree, CascadeError> {
        match tree.fault(features) {
            Some(problem) => Err(self.err(path, problem)),
            None => Ok(tree),
        }
    }
}

impl Tree {
    /// Why the tree cannot be evaluated, if it cannot: evaluation starts at split 0, so there
    /// must be one; every reference must point at an existing split, leaf and feature (of
    /// `features`), and the splits only forward, so that evaluation always ends at a leaf.
    pub fn fault(&self, features: usize) -> Option<String> {
        if self.splits.is_empty() {
            return Some("a tree without splits".into());
        }
        for (i, s) in self.splits.iter().enumerate() {
            if s.feature as usize >= features {
                return Some(format!("split {i} uses feature {} of {features}", s.feature));
            }
            for child in [s.left, s.right] {
                // unsigned_abs: -i32::MIN overflows.
                let ok = if child > 0 { (child as usize) < self.splits.len() && child as usize > i } else { (child.unsigned_abs() as usize) < self.leaves.len() };
                if !ok {
                    return Some(format!("split {i} points at {child}, outside the tree's {} splits and {} leaves", self.splits.len(), self.leaves.len()));
                }
            }
        }
        None
    }
}

impl Cascade {
    /// Whether any feature uses 45-degree rectangles.
    pub fn tilted_features(&self) -> bool {
        self.features.iter().any(|f| f.tilted)
    }

    /// Parses cascade XML text; `file` names it in errors.
    pub fn parse(xml: &str, file: &str) -> Result<Cascade, CascadeError> {
        let reader = Reader { file };
        let doc = Document::parse(xml).map_err(|e| reader.err("", format!("not well-formed XML: {e}")))?;
        let root = doc.root_element();
        // OpenCV's files wrap the cascade in <opencv_storage>; accept it bare too.
        let (top, path) = if root.has_tag_name("opencv_storage") {
            let first = root.children().find(|c| c.is_element()).ok_or_else(|| reader.err("opencv_storage", "empty: no cascade inside"))?;
            (first, format!("opencv_storage/{}", first.tag_name().name()))
        } else {
            (root, root.tag_name().name().to_string())
        };
        let cascade = if top.has_tag_name("cascade") {
            reader.current(top, &path)?
        } else if top.attribute("type_id") == Some("opencv-haar-classifier") || top.children().any(|c| c.has_tag_name("size")) {
            reader.old(top, &path)?
        } else {
            return Err(reader.err(&path, "not an OpenCV cascade: expected <cascade> or an old-format <haarcascade_...> classifier"));
        };
        if cascade.stages.is_empty() {
            return Err(reader.err(&path, "no stages"));
        }
        Ok(cascade)
    }

    pub fn load(path: &Path) -> Result<Cascade, CascadeError> {
        let xml = std::fs::read_to_string(path).map_err(|e| CascadeError { file: path.display().to_string(), path: String::new(), problem: format!("cannot read: {e}") })?;
        Self::parse(&xml, &path.display().to_string())
    }
}
