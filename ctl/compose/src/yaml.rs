//! A YAML document as a tree whose every node knows its line and column, built from
//! yaml-rust2's event stream without recursion. Refused besides what the parser refuses:
//! more than one document, a key that is not a scalar, a key given twice in one mapping,
//! nesting deeper than [`MAX_DEPTH`], and more than [`MAX_NODES`] nodes once aliases are
//! expanded (a "billion laughs" document). `<<` merge keys are resolved as Compose does.

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deepest nesting accepted (a Compose file needs about 6).
pub const MAX_DEPTH: usize = 64;
/// Most nodes in the document, aliases expanded.
pub const MAX_NODES: usize = 200_000;

/// 1-based line and column of a node in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl Mark {
    fn of(m: &Marker) -> Self {
        Mark {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// A node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: Kind,
    pub mark: Mark,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A scalar: its text, and whether it was written plain (unquoted), which decides
    /// whether it can be a null, a boolean or a number.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in document order; keys are unique.
    Map(Vec<(Key, Node)>),
}

/// A mapping key (always a scalar in what is accepted).
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub text: String,
    pub mark: Mark,
}

impl Node {
    /// A plain null (`~`, `null`, or nothing at all).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The mapping's entries, if it is one.
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    /// What the node is, for messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            _ if self.is_null() => "null",
            Kind::Scalar { .. } => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// Why a document was refused, with the position of the fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub mark: Mark,
    pub message: String,
}

enum Frame {
    Seq {
        items: Vec<Node>,
        mark: Mark,
        anchor: usize,
        first: usize,
    },
    Map {
        entries: Vec<(Key, Node)>,
        /// The keys so far (a duplicate is found without a scan).
        seen: HashSet<String>,
        key: Option<Key>,
        mark: Mark,
        anchor: usize,
        first: usize,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    root: Option<Node>,
}

/// Parses `src` as one YAML document; an empty stream is `None`.
pub fn parse(src: &str) -> Result<Option<Node>, YamlError> {
    let mut parser = Parser::new_from_str(src);
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        root: None,
    };
    let mut documents = 0;
    loop {
        let (event, marker) = parser.next_token().map_err(|e| YamlError {
            mark: Mark::of(e.marker()),
            message: e.info().to_owned(),
        })?;
        let mark = Mark::of(&marker);
        match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        mark,
                        message: "a second YAML document; a Compose file is one document".into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == TScalarStyle::Plain;
                let node = Node {
                    kind: Kind::Scalar { text, plain },
                    mark,
                };
                b.count(1, mark)?;
                b.complete(node, anchor, 1)?;
            }
            Event::Alias(id) => {
                let (node, count) = b.anchors.get(&id).cloned().ok_or(YamlError {
                    mark,
                    message: "an alias to an anchor that is not complete yet (a cycle)".into(),
                })?;
                b.count(count, mark)?;
                b.complete(node, 0, count)?;
            }
            Event::SequenceStart(anchor, _tag) => {
                b.open(mark)?;
                b.stack.push(Frame::Seq {
                    items: Vec::new(),
                    mark,
                    anchor,
                    first: b.nodes,
                });
            }
            Event::MappingStart(anchor, _tag) => {
                b.open(mark)?;
                b.stack.push(Frame::Map {
                    entries: Vec::new(),
                    seen: HashSet::new(),
                    key: None,
                    mark,
                    anchor,
                    first: b.nodes,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor, first) = match b.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        mark,
                        anchor,
                        first,
                    }) => (
                        Node {
                            kind: Kind::Seq(items),
                            mark,
                        },
                        anchor,
                        first,
                    ),
                    Some(Frame::Map {
                        entries,
                        mark,
                        anchor,
                        first,
                        ..
                    }) => (
                        Node {
                            kind: Kind::Map(merge(entries)?),
                            mark,
                        },
                        anchor,
                        first,
                    ),
                    None => {
                        return Err(YamlError {
                            mark,
                            message: "the end of a collection that never started".into(),
                        })
                    }
                };
                let count = b.nodes - first + 1;
                b.complete(node, anchor, count)?;
            }
        }
    }
    Ok(b.root)
}

impl Builder {
    fn count(&mut self, n: usize, mark: Mark) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                mark,
                message: format!(
                    "more than {MAX_NODES} nodes with aliases expanded; a Compose file is far smaller"
                ),
            });
        }
        Ok(())
    }

    fn open(&mut self, mark: Mark) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlError {
                mark,
                message: format!("nested deeper than {MAX_DEPTH} levels"),
            });
        }
        self.count(1, mark)
    }

    /// A finished node goes into its parent (or becomes the root); `count` is how many
    /// nodes it holds, for aliases of it.
    fn complete(&mut self, node: Node, anchor: usize, count: usize) -> Result<(), YamlError> {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), count));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries, seen, key, ..
            }) => match key.take() {
                None => match node.kind {
                    Kind::Scalar { text, .. } => {
                        if !seen.insert(text.clone()) {
                            let first = entries
                                .iter()
                                .find(|(k, _)| k.text == text)
                                .map_or(node.mark.line, |(k, _)| k.mark.line);
                            return Err(YamlError {
                                mark: node.mark,
                                message: format!(
                                    "key `{}` is given twice in this mapping (first at line {first})",
                                    shorten(&text),
                                ),
                            });
                        }
                        *key = Some(Key {
                            text,
                            mark: node.mark,
                        });
                    }
                    _ => {
                        return Err(YamlError {
                            mark: node.mark,
                            message: format!(
                                "a key that is {}; Compose keys are strings",
                                node.describe()
                            ),
                        })
                    }
                },
                Some(k) => entries.push((k, node)),
            },
        }
        Ok(())
    }
}

/// Resolves `<<` merge keys: the entries of the merged mapping (or of each mapping of a
/// merged list, the first one winning) that the mapping does not set itself.
fn merge(entries: Vec<(Key, Node)>) -> Result<Vec<(Key, Node)>, YamlError> {
    if !entries.iter().any(|(k, _)| k.text == "<<") {
        return Ok(entries);
    }
    let mut own = Vec::with_capacity(entries.len());
    let mut merged: Vec<Node> = Vec::new();
    for (k, v) in entries {
        if k.text == "<<" {
            match v.kind {
                Kind::Map(_) => merged.push(v),
                Kind::Seq(items) => merged.extend(items),
                _ => {
                    return Err(YamlError {
                        mark: v.mark,
                        message: "`<<` merges a mapping or a list of mappings".into(),
                    })
                }
            }
        } else {
            own.push((k, v));
        }
    }
    let mut have: HashSet<String> = own.iter().map(|(k, _)| k.text.clone()).collect();
    for m in merged {
        let Kind::Map(items) = m.kind else {
            return Err(YamlError {
                mark: m.mark,
                message: "`<<` merges a mapping or a list of mappings".into(),
            });
        };
        for (k, v) in items {
            if have.insert(k.text.clone()) {
                own.push((k, v));
            }
        }
    }
    Ok(own)
}

/// At most 64 characters of a key, for messages and paths; control characters as `?`, an
/// empty key as `""`.
pub fn shorten(s: &str) -> String {
    if s.is_empty() {
        return "\"\"".into();
    }
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(src: &str) -> Vec<(Key, Node)> {
        match parse(src).unwrap().unwrap().kind {
            Kind::Map(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn marks_are_one_based() {
        let m = map("a: 1\nb:\n  c: x\n");
        assert_eq!(m[0].0.mark, Mark { line: 1, column: 1 });
        let Kind::Map(inner) = &m[1].1.kind else {
            panic!()
        };
        assert_eq!(inner[0].0.mark, Mark { line: 3, column: 3 });
        assert_eq!(inner[0].1.mark, Mark { line: 3, column: 6 });
    }

    #[test]
    fn a_lone_cr_is_a_line_break() {
        let m = map("a: 1\rb: 2\r\nc: 3\n");
        let lines: Vec<usize> = m.iter().map(|(k, _)| k.mark.line).collect();
        assert_eq!(lines, [1, 2, 3]);
    }

    #[test]
    fn merge_keys_and_aliases() {
        let m = map("x: &d {a: 1, b: 2}\ny:\n  <<: *d\n  b: 3\n");
        let Kind::Map(y) = &m[1].1.kind else { panic!() };
        let keys: Vec<&str> = y.iter().map(|(k, _)| k.text.as_str()).collect();
        assert_eq!(keys, ["b", "a"]);
        assert!(matches!(&y[0].1.kind, Kind::Scalar { text, .. } if text == "3"));
    }

    #[test]
    fn refusals_name_line_and_column() {
        for (src, line, col, what) in [
            ("a: 1\na: 2\n", 2, 1, "twice"),
            ("a: [1, 2\n", 2, 1, ""),
            ("? [1]\n: x\n", 1, 3, "key that is a list"),
            ("a: 1\n---\nb: 2\n", 2, 1, "second YAML document"),
            ("a: *nope\n", 1, 4, "unknown anchor"),
        ] {
            let e = parse(src).unwrap_err();
            assert_eq!((e.mark.line, e.mark.column), (line, col), "{src:?}: {e:?}");
            assert!(e.message.contains(what), "{src:?}: {e:?}");
        }
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(&src).unwrap_err().message.contains("nodes"));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(&deep).unwrap_err().message.contains("deeper"));
    }
}
