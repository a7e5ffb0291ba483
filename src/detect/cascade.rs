//! OpenCV Haar cascades from XML, in both of OpenCV's formats:
//! - the current one: `<cascade>` with `stages/_/weakClassifiers/_/{internalNodes,leafValues}`
//!   and a shared `features` list;
//! - the old one (`<haarcascade_*>` with `type_id="opencv-haar-classifier"`): `stages/_/trees/_/_`
//!   nodes that carry their own feature, threshold and `left_val`/`left_node` children.
//!
//! Both become one [`Cascade`]. Every error names the element path where the file went wrong.

use roxmltree::{Document, Node as XmlNode};
use std::path::Path;

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
        node.children()
            .find(|c| c.has_tag_name(name))
            .map(|c| (c, format!("{path}/{name}")))
            .ok_or_else(|| self.err(path, format!("missing <{name}>")))
    }

    /// The `<_>` items of a list element, with their paths.
    fn items<'d, 'i>(&self, node: XmlNode<'d, 'i>, path: &str) -> Vec<(XmlNode<'d, 'i>, String)> {
        node.children().filter(|c| c.has_tag_name("_")).enumerate().map(|(i, c)| (c, format!("{path}/_[{i}]"))).collect()
    }

    fn numbers<T: std::str::FromStr>(&self, node: XmlNode, path: &str) -> Result<Vec<T>, CascadeError> {
        node.text()
            .unwrap_or("")
            .split_ascii_whitespace()
            .map(|t| t.parse::<T>().map_err(|_| self.err(path, format!("{t:?} is not a number of the expected kind"))))
            .collect()
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
            let v: Vec<f32> = self.numbers(r, &rp)?;
            let [x, y, w, h, weight] = v[..] else {
                return Err(self.err(&rp, format!("a rectangle is 5 numbers (x y w h weight), found {}", v.len())));
            };
            if [x, y, w, h].iter().any(|c| c.fract() != 0.0 || *c < 0.0) {
                return Err(self.err(&rp, "rectangle coordinates must be non-negative integers"));
            }
            let rect = WeightedRect { x: x as u32, y: y as u32, w: w as u32, h: h as u32, weight };
            rects.push(rect);
        }
        if rects.is_empty() || rects.len() > 3 {
            return Err(self.err(&rects_path, format!("a feature has 1 to 3 rectangles, found {}", rects.len())));
        }
        let tilted = match node.children().find(|c| c.has_tag_name("tilted")) {
            Some(t) => self.number::<u32>(t, &format!("{path}/tilted"))? != 0,
            None => false,
        };
        // Tilted rectangles extend w + h in both directions; upright ones w and h.
        for r in &rects {
            let (right, bottom) = if tilted { (r.x + r.w, r.y + r.w + r.h) } else { (r.x + r.w, r.y + r.h) };
            if right > window.0 || bottom > window.1 || (tilted && r.x < r.h) {
                return Err(self.err(&rects_path, format!("rectangle {r:?} leaves the {}x{} window", window.0, window.1)));
            }
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
        let window = (self.child_number::<u32>(root, path, "width")?, self.child_number::<u32>(root, path, "height")?);
        let (features_node, features_path) = self.child(root, path, "features")?;
        let features = self.items(features_node, &features_path).into_iter().map(|(f, p)| self.feature(f, &p, window)).collect::<Result<Vec<_>, _>>()?;
        let (stages_node, stages_path) = self.child(root, path, "stages")?;
        let mut stages = Vec::new();
        for (s, sp) in self.items(stages_node, &stages_path) {
            let threshold = self.child_number::<f32>(s, &sp, "stageThreshold")?;
            let (weak, weak_path) = self.child(s, &sp, "weakClassifiers")?;
            let mut trees = Vec::new();
            for (w, wp) in self.items(weak, &weak_path) {
                let (nodes, np) = self.child(w, &wp, "internalNodes")?;
                let values: Vec<f64> = self.numbers(nodes, &np)?;
                if values.is_empty() || !values.len().is_multiple_of(4) {
                    return Err(self.err(&np, format!("expected 4 numbers per split (left right feature threshold), found {}", values.len())));
                }
                let (leaf_node, lp) = self.child(w, &wp, "leafValues")?;
                let leaves: Vec<f32> = self.numbers(leaf_node, &lp)?;
                let splits = values
                    .chunks(4)
                    .map(|v| Split { left: v[0] as i32, right: v[1] as i32, feature: v[2] as u32, threshold: v[3] as f32 })
                    .collect::<Vec<_>>();
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
            [w, h] => (w, h),
            _ => return Err(self.err(&size_path, "expected the window size as 2 numbers")),
        };
        let mut features = Vec::new();
        let mut stages = Vec::new();
        let (stages_node, stages_path) = self.child(root, path, "stages")?;
        for (s, sp) in self.items(stages_node, &stages_path) {
            let threshold = self.child_number::<f32>(s, &sp, "stage_threshold")?;
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
                            tree.leaves.push(self.number(v, &format!("{np}/{val}"))?);
                            Ok(-(tree.leaves.len() as i32 - 1))
                        } else {
                            self.child_number::<i32>(*n, np, node)
                        }
                    };
                    let left = side("left_val", "left_node")?;
                    let right = side("right_val", "right_node")?;
                    let threshold = self.child_number::<f32>(*n, np, "threshold")?;
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

    /// Every reference in a tree points at an existing split, leaf and feature, and the splits
    /// only point forward, so evaluation always ends at a leaf.
    fn checked_tree(&self, tree: Tree, features: usize, path: &str) -> Result<Tree, CascadeError> {
        for (i, s) in tree.splits.iter().enumerate() {
            if s.feature as usize >= features {
                return Err(self.err(path, format!("split {i} uses feature {} of {features}", s.feature)));
            }
            for child in [s.left, s.right] {
                let ok = if child > 0 { (child as usize) < tree.splits.len() && child as usize > i } else { ((-child) as usize) < tree.leaves.len() };
                if !ok {
                    return Err(self.err(path, format!("split {i} points at {child}, outside the tree's {} splits and {} leaves", tree.splits.len(), tree.leaves.len())));
                }
            }
        }
        Ok(tree)
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
        if cascade.window.0 < 3 || cascade.window.1 < 3 {
            return Err(reader.err(&path, format!("window {}x{} is too small", cascade.window.0, cascade.window.1)));
        }
        Ok(cascade)
    }

    pub fn load(path: &Path) -> Result<Cascade, CascadeError> {
        let xml = std::fs::read_to_string(path)
            .map_err(|e| CascadeError { file: path.display().to_string(), path: String::new(), problem: format!("cannot read: {e}") })?;
        Self::parse(&xml, &path.display().to_string())
    }
}
