//! The daemon's modules form layers: no two sibling modules may use each
//! other, directly or through others.
//!
//! `lib.rs` says data flows one way (policy → maps → kernel → events →
//! audit); this keeps the code honest about it. Every `.rs` file under
//! `src/` is parsed, each path it names (`use` trees, types, calls) is
//! resolved to the module that defines it, following imports and
//! re-exports, and the references between siblings (the top-level modules,
//! and the children of each module) must not form a cycle. A reference from
//! a module to its own parent or child does not count: a parent re-exporting
//! its children and the children naming the parent's error type is how a
//! Rust module is built. Test code (`#[cfg(test)]`) is left out: a test may
//! reach up a layer to build its fixtures.
//!
//! Paths inside macro invocations are not seen; nothing in this crate hides
//! a module dependency in one today.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use syn::visit::Visit;

/// A module's path below the crate root; the root is empty.
type ModulePath = Vec<String>;

/// One parsed module: where it is, what it imports, what it names.
#[derive(Default)]
struct Module {
    file: PathBuf,
    /// Names brought in by `use` (and `pub use`), with the path each stands for.
    imports: BTreeMap<String, Vec<String>>,
    /// Modules whose names `use …::*` brings in.
    globs: Vec<Vec<String>>,
    /// Every path the module names, as written.
    references: Vec<Vec<String>>,
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .meta
                .require_list()
                .is_ok_and(|list| list.tokens.to_string() == "test")
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item;
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// Walks one file; inline modules become modules of their own.
struct Collector<'a> {
    modules: &'a mut BTreeMap<ModulePath, Module>,
    file: PathBuf,
    current: ModulePath,
}

impl Collector<'_> {
    fn module(&mut self) -> &mut Module {
        let file = self.file.clone();
        self.modules
            .entry(self.current.clone())
            .or_insert_with(|| Module {
                file,
                ..Module::default()
            })
    }

    fn use_tree(&mut self, prefix: &[String], tree: &syn::UseTree) {
        let mut path = prefix.to_vec();
        match tree {
            syn::UseTree::Path(p) => {
                path.push(p.ident.to_string());
                self.use_tree(&path, &p.tree);
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                if name == "self" {
                    if let Some(last) = path.last().cloned() {
                        self.module().imports.insert(last, path.clone());
                    }
                } else {
                    path.push(name.clone());
                    self.module().imports.insert(name, path.clone());
                }
                self.module().references.push(path);
            }
            syn::UseTree::Rename(r) => {
                let name = r.ident.to_string();
                if name != "self" {
                    path.push(name);
                }
                self.module()
                    .imports
                    .insert(r.rename.to_string(), path.clone());
                self.module().references.push(path);
            }
            syn::UseTree::Glob(_) => {
                self.module().globs.push(path.clone());
                self.module().references.push(path);
            }
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(&path, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if is_cfg_test(item_attrs(item)) {
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        // `mod name;` files are read on their own; inline bodies are walked here.
        if let Some((_, items)) = &item.content {
            self.current.push(item.ident.to_string());
            self.module();
            for item in items {
                self.visit_item(item);
            }
            self.current.pop();
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&[], &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.module().references.push(segments);
        syn::visit::visit_path(self, path);
    }
}

/// The module a file defines: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`.
fn module_of(src: &Path, file: &Path) -> ModulePath {
    let relative = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

struct Crate {
    modules: BTreeMap<ModulePath, Module>,
}

impl Crate {
    fn parse(src: &Path) -> Self {
        let mut files = Vec::new();
        rust_files(src, &mut files);
        let mut modules = BTreeMap::new();
        for file in files {
            // The binary is a client of the library, not one of its layers.
            if file == src.join("main.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).expect("read source");
            let syntax =
                syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let current = module_of(src, &file);
            let mut collector = Collector {
                modules: &mut modules,
                file: file.clone(),
                current,
            };
            collector.module();
            if is_cfg_test(&syntax.attrs) {
                continue;
            }
            for item in &syntax.items {
                collector.visit_item(item);
            }
        }
        Crate { modules }
    }

    /// Makes `path`, as written in `module`, absolute; `None` for paths
    /// outside the crate (std, dependencies) and local names.
    fn absolute(&self, module: &ModulePath, path: &[String], depth: usize) -> Option<Vec<String>> {
        let first = path.first()?;
        if depth > 8 {
            return None;
        }
        match first.as_str() {
            "crate" => Some(path[1..].to_vec()),
            "self" => {
                let mut abs = module.clone();
                abs.extend_from_slice(&path[1..]);
                Some(abs)
            }
            "super" => {
                let mut abs = module.clone();
                let mut rest = path;
                while rest.first().is_some_and(|s| s == "super") {
                    abs.pop()?;
                    rest = &rest[1..];
                }
                abs.extend_from_slice(rest);
                Some(abs)
            }
            name => {
                let mut child = module.clone();
                child.push(name.to_string());
                if self.modules.contains_key(&child) {
                    child.extend_from_slice(&path[1..]);
                    return Some(child);
                }
                let this = self.modules.get(module)?;
                if let Some(target) = this.imports.get(name) {
                    // An import names an absolute or relative path itself.
                    if target.as_slice() == path {
                        return None;
                    }
                    let mut abs = self.absolute(module, target, depth + 1)?;
                    abs.extend_from_slice(&path[1..]);
                    return Some(abs);
                }
                for glob in &this.globs {
                    let Some(source) = self.absolute(module, glob, depth + 1) else {
                        continue;
                    };
                    if let Some(found) = self.lookup(&source, path, depth + 1) {
                        return Some(found);
                    }
                }
                None
            }
        }
    }

    /// `path` looked up as if written in `module` (through a glob import).
    fn lookup(&self, module: &ModulePath, path: &[String], depth: usize) -> Option<Vec<String>> {
        let source = self.modules.get(module)?;
        let name = path.first()?;
        let mut child = module.clone();
        child.push(name.clone());
        if self.modules.contains_key(&child) || source.imports.contains_key(name) {
            return self.absolute(module, path, depth);
        }
        None
    }

    /// The module an absolute path's item lives in, following re-exports.
    fn defining_module(&self, path: &[String], depth: usize) -> Option<ModulePath> {
        let mut module: ModulePath = Vec::new();
        for (i, segment) in path.iter().enumerate() {
            let mut child = module.clone();
            child.push(segment.clone());
            if self.modules.contains_key(&child) {
                module = child;
                continue;
            }
            // `segment` is an item of `module`, or something it re-exports.
            let source = self.modules.get(&module)?;
            if depth < 8
                && let Some(target) = source.imports.get(segment)
                && let Some(mut abs) = self.absolute(&module, target, depth + 1)
            {
                abs.extend_from_slice(&path[i + 1..]);
                return self.defining_module(&abs, depth + 1).or(Some(module));
            }
            return Some(module);
        }
        Some(module)
    }

    /// Edges between siblings: for each parent module, which of its children
    /// use which, with one file that shows it.
    fn sibling_edges(&self) -> BTreeMap<ModulePath, BTreeMap<(String, String), PathBuf>> {
        let mut edges: BTreeMap<ModulePath, BTreeMap<(String, String), PathBuf>> = BTreeMap::new();
        for (from, module) in &self.modules {
            for reference in &module.references {
                let Some(abs) = self.absolute(from, reference, 0) else {
                    continue;
                };
                let Some(to) = self.defining_module(&abs, 0) else {
                    continue;
                };
                let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
                // A module and its own ancestors or descendants.
                if common == from.len() || common == to.len() {
                    continue;
                }
                let parent = from[..common].to_vec();
                edges
                    .entry(parent)
                    .or_default()
                    .entry((from[common].clone(), to[common].clone()))
                    .or_insert_with(|| module.file.clone());
            }
        }
        edges
    }
}

/// Strongly connected components with more than one member (Tarjan).
fn cycles(edges: &BTreeMap<(String, String), PathBuf>) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().push(to);
        graph.entry(to).or_default();
    }
    struct Tarjan<'a> {
        graph: &'a BTreeMap<&'a str, Vec<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for &w in &self.graph[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for &v in graph.keys() {
        if !tarjan.index.contains_key(v) {
            tarjan.visit(v);
        }
    }
    tarjan.found
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn sibling_modules_do_not_use_each_other_in_a_cycle() {
    let krate = Crate::parse(&src());
    let mut report = String::new();
    for (parent, edges) in krate.sibling_edges() {
        for component in cycles(&edges) {
            let scope = if parent.is_empty() {
                "crate".to_string()
            } else {
                parent.join("::")
            };
            writeln!(report, "cycle among {scope}::{{{}}}:", component.join(", ")).unwrap();
            for ((from, to), file) in &edges {
                if component.contains(from) && component.contains(to) {
                    let file = file.strip_prefix(src()).unwrap_or(file);
                    writeln!(report, "  {from} -> {to} (e.g. {})", file.display()).unwrap();
                }
            }
        }
    }
    assert!(
        report.is_empty(),
        "modules that use each other must be layered; move the shared type \
         down to the lower module:\n{report}"
    );
}

/// The checker itself sees a cycle when there is one: a two-module crate
/// whose modules name each other, through an import, a re-export and a
/// `super` path.
#[test]
fn the_checker_finds_a_cycle_through_imports_and_re_exports() {
    let dir = std::env::temp_dir().join(format!("baton-layers-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("low")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod high;\npub mod low;\n").unwrap();
    std::fs::write(
        src.join("high.rs"),
        "use crate::low::Thing;\npub struct Top(pub Thing);\n",
    )
    .unwrap();
    std::fs::write(
        src.join("low/mod.rs"),
        "mod inner;\npub use inner::Thing;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("low/inner.rs"),
        "pub struct Thing;\npub fn up() -> usize { std::mem::size_of::<super::super::high::Top>() }\n\
         #[cfg(test)]\nmod tests { use crate::high::Top; }\n",
    )
    .unwrap();
    let krate = Crate::parse(&src);
    let edges = krate.sibling_edges();
    let top = &edges[&Vec::<String>::new()];
    assert_eq!(
        cycles(top),
        vec![vec!["high".to_string(), "low".to_string()]]
    );

    // Without the upward call, only the test module reaches up: no cycle.
    std::fs::write(
        src.join("low/inner.rs"),
        "pub struct Thing;\n#[cfg(test)]\nmod tests { use crate::high::Top; }\n",
    )
    .unwrap();
    let krate = Crate::parse(&src);
    let edges = krate.sibling_edges();
    assert!(cycles(&edges[&Vec::<String>::new()]).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
