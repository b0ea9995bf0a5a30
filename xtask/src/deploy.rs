//! Generation of the `AgentPolicy` CustomResourceDefinition from the policy's
//! JSON Schema.
//!
//! Kubernetes accepts only a *structural* subset of OpenAPI v3 in a CRD: no
//! `$ref`, a `type` on every node, nothing but value checks inside `anyOf` /
//! `oneOf`, `nullable` instead of a `null` type, and booleans for
//! `exclusiveMinimum` / `exclusiveMaximum`. The schema that `schemars` writes
//! uses all of those, so it is rewritten here rather than pasted in.
//!
//! What the structural subset cannot say is left to Baton: a policy that the
//! API server admits is checked again, fully, when the daemon loads it. What
//! this generator cannot translate faithfully is an error, never silently
//! dropped.

use std::{collections::BTreeSet, fmt::Write as _, path::Path};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

/// API group of the resource.
pub const GROUP: &str = "baton.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// Where the generated definition lives, relative to the workspace root.
pub const CRD_PATH: &str = "deploy/kubernetes/agentpolicy-crd.yaml";
/// Where the policy's JSON Schema lives, relative to the workspace root.
pub const SCHEMA_PATH: &str = "policies/agentpolicy.schema.json";

/// `format` values the Kubernetes API server knows; any other is dropped
/// (the API server would ignore it, with a warning on every apply).
const KUBERNETES_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
    "date-time",
    "int32",
    "int64",
    "float",
    "double",
];

/// Reads the JSON Schema at `schema` and writes the CustomResourceDefinition
/// (YAML) to `out`.
pub fn generate_crd(schema: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(schema)
        .with_context(|| format!("cannot read {}", schema.display()))?;
    let schema_value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", schema.display()))?;
    let yaml = crd_yaml(&schema_value, &display_relative(schema))
        .with_context(|| format!("cannot turn {} into a CRD", schema.display()))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(out, yaml).with_context(|| format!("cannot write {}", out.display()))?;
    println!("crd: wrote {} from {}", out.display(), schema.display());
    Ok(())
}

/// The CRD for `schema` as YAML; `source` is named in the header comment.
pub fn crd_yaml(schema: &Value, source: &str) -> Result<String> {
    let crd = crd(schema)?;
    let mut text = format!(
        "# Generated from {source} by `cargo xtask crd`; do not edit.\n\
         # The API server checks the structure of an AgentPolicy; Baton checks\n\
         # everything again when it loads the policy.\n"
    );
    write_yaml_document(&mut text, &crd);
    Ok(text)
}

/// The CRD object for `schema`.
pub fn crd(schema: &Value) -> Result<Value> {
    let open_api = open_api_schema(schema)?;
    Ok(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("agentpolicies.{GROUP}"),
            "labels": {
                "app.kubernetes.io/name": "baton",
                "app.kubernetes.io/part-of": "baton",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": "AgentPolicy",
                "listKind": "AgentPolicyList",
                "plural": "agentpolicies",
                "singular": "agentpolicy",
                "shortNames": ["agentpol"],
                "categories": ["baton"],
            },
            // An agent policy is about processes on nodes, which belong to
            // no namespace.
            "scope": "Cluster",
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "additionalPrinterColumns": [
                    {"name": "Agent", "type": "string", "jsonPath": ".spec.selector.agent"},
                    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": open_api},
            }],
        },
    }))
}

/// The `openAPIV3Schema` for a policy document schema.
///
/// A schema of the whole document (with `properties.spec`) keeps its `spec`
/// and any other top-level field but `metadata`, `apiVersion` and `kind`,
/// which Kubernetes owns. Any other schema is taken as the schema of `spec`.
pub fn open_api_schema(schema: &Value) -> Result<Value> {
    let root = schema
        .as_object()
        .context("the schema is not a JSON object")?;
    let converter = Converter::new(root);
    let mut properties = Map::new();
    properties.insert(
        "apiVersion".into(),
        json!({"type": "string", "description": "The schema version: baton.dev/v1alpha1."}),
    );
    properties.insert(
        "kind".into(),
        json!({"type": "string", "description": "The kind of object: AgentPolicy."}),
    );
    // Kubernetes allows no constraint on metadata but its name, and Baton's
    // own name rule is checked when the policy loads.
    properties.insert("metadata".into(), json!({"type": "object"}));
    let mut required = vec![Value::from("spec")];
    let document = root
        .get("properties")
        .and_then(Value::as_object)
        .filter(|p| p.contains_key("spec"));
    let description;
    match document {
        Some(fields) => {
            for (name, field) in fields {
                if matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let converted = converter.convert(field, &format!("/properties/{name}"))?;
                properties.insert(name.clone(), converted);
            }
            required = root
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter(|n| properties.contains_key(n.as_str().unwrap_or_default()))
                        .filter(|n| !matches!(n.as_str(), Some("apiVersion" | "kind" | "metadata")))
                        .cloned()
                        .collect()
                })
                .unwrap_or(required);
            description = root.get("description").cloned();
        }
        None => {
            let spec = converter.convert(schema, "")?;
            description = None;
            properties.insert("spec".into(), spec);
        }
    }
    let mut out = Map::new();
    if let Some(description) = description {
        out.insert("description".into(), description);
    }
    out.insert("type".into(), "object".into());
    if !required.is_empty() {
        out.insert("required".into(), Value::Array(required));
    }
    out.insert("properties".into(), Value::Object(properties));
    Ok(Value::Object(out))
}

/// Rewrites JSON Schema nodes into structural OpenAPI v3 nodes.
struct Converter<'a> {
    /// `definitions` (draft 7) and `$defs` (2019-09 and later).
    definitions: Vec<(&'static str, &'a Map<String, Value>)>,
}

impl<'a> Converter<'a> {
    fn new(root: &'a Map<String, Value>) -> Self {
        let mut definitions = Vec::new();
        for key in ["definitions", "$defs"] {
            if let Some(defs) = root.get(key).and_then(Value::as_object) {
                definitions.push((key, defs));
            }
        }
        Self { definitions }
    }

    fn convert(&self, node: &Value, path: &str) -> Result<Value> {
        self.convert_node(node, path, &mut Vec::new())
    }

    /// `stack` holds the `$ref`s being inlined, to refuse recursion: a CRD
    /// schema is a finite tree.
    fn convert_node(&self, node: &Value, path: &str, stack: &mut Vec<String>) -> Result<Value> {
        let node = match node {
            // `true` accepts anything: keep whatever is there.
            Value::Bool(true) => return Ok(json!({"x-kubernetes-preserve-unknown-fields": true})),
            Value::Bool(false) => bail!("{path}: a schema that accepts nothing has no CRD form"),
            Value::Object(node) => node,
            _ => bail!("{path}: a schema must be an object or a boolean"),
        };
        let (node, pushed) = self.inline(node, path, stack)?;
        let result = self.convert_object(&node, path, stack);
        stack.truncate(stack.len() - pushed);
        result
    }

    /// Replaces `$ref` and single-element `allOf` with what they point at;
    /// keywords beside them (a description, say) win. Returns the merged
    /// node and how many references were pushed onto `stack`.
    fn inline(
        &self,
        node: &Map<String, Value>,
        path: &str,
        stack: &mut Vec<String>,
    ) -> Result<(Map<String, Value>, usize)> {
        let mut node = node.clone();
        let mut pushed = 0;
        loop {
            if let Some(reference) = node.remove("$ref") {
                let reference = reference
                    .as_str()
                    .with_context(|| format!("{path}: $ref is not a string"))?
                    .to_owned();
                if stack.contains(&reference) {
                    bail!("{path}: {reference} refers to itself; a CRD schema cannot be recursive");
                }
                let target = self.resolve(&reference, path)?;
                stack.push(reference);
                pushed += 1;
                node = overlay(target, node);
                continue;
            }
            let single_all_of = matches!(node.get("allOf"), Some(Value::Array(a)) if a.len() == 1);
            if single_all_of {
                let Some(Value::Array(mut all_of)) = node.remove("allOf") else {
                    unreachable!("checked above");
                };
                let Some(Value::Object(inner)) = all_of.pop() else {
                    bail!("{path}/allOf/0: expected a schema object");
                };
                node = overlay(&inner, node);
                continue;
            }
            return Ok((node, pushed));
        }
    }

    fn resolve(&self, reference: &str, path: &str) -> Result<&'a Map<String, Value>> {
        for (key, defs) in &self.definitions {
            if let Some(name) = reference.strip_prefix(&format!("#/{key}/")) {
                let name = name.replace("~1", "/").replace("~0", "~");
                return defs
                    .get(&name)
                    .and_then(Value::as_object)
                    .with_context(|| format!("{path}: {reference} is not defined"));
            }
        }
        bail!("{path}: cannot resolve {reference}: only #/definitions/* and #/$defs/* are inlined")
    }

    fn convert_object(
        &self,
        node: &Map<String, Value>,
        path: &str,
        stack: &mut Vec<String>,
    ) -> Result<Value> {
        let mut node = node.clone();
        let mut out = Map::new();
        let mut nullable = false;

        // `type: [T, "null"]` and the like.
        let mut types = match node.remove("type") {
            None => BTreeSet::new(),
            Some(Value::String(t)) => BTreeSet::from([t]),
            Some(Value::Array(list)) => list
                .into_iter()
                .map(|t| match t {
                    Value::String(t) => Ok(t),
                    _ => bail!("{path}/type: every type must be a string"),
                })
                .collect::<Result<_>>()?,
            Some(_) => bail!("{path}/type: expected a string or a list of strings"),
        };
        if types.remove("null") {
            nullable = true;
            if types.is_empty() {
                bail!("{path}: a value that can only be null has no CRD form");
            }
        }

        // `anyOf` / `oneOf`: nullable wrappers, int-or-string, string
        // enums written variant by variant, and alternatives between
        // objects.
        for junctor in ["anyOf", "oneOf"] {
            let Some(branches) = node.remove(junctor) else {
                continue;
            };
            let depth = stack.len();
            let outcome = self.convert_junctor(
                junctor,
                &branches,
                path,
                stack,
                JunctorState {
                    node: &mut node,
                    out: &mut out,
                    types: &mut types,
                    nullable: &mut nullable,
                },
            );
            // The references the branches went through stay on the stack
            // until their contents are converted, so that recursion through
            // an alternative is caught too.
            let outcome = match outcome {
                Ok(Junctor::Merged) => {
                    // What is left is one value: convert the merged node.
                    let merged = self.convert_object(&node, path, stack);
                    stack.truncate(depth);
                    return merged;
                }
                other => other,
            };
            stack.truncate(depth);
            outcome?;
        }

        if types == BTreeSet::from(["integer".to_owned(), "string".to_owned()]) {
            out.insert("x-kubernetes-int-or-string".into(), true.into());
            // Checks that apply to one of the two types only (a port number's
            // range, a range's pattern) cannot be said here; Baton checks them.
            for key in [
                "pattern",
                "minimum",
                "maximum",
                "exclusiveMinimum",
                "exclusiveMaximum",
                "format",
                "minLength",
                "maxLength",
                "multipleOf",
            ] {
                node.remove(key);
            }
            types.clear();
        }
        match types.len() {
            0 => {}
            1 => {
                let t = types.pop_first().expect("one type");
                if !matches!(
                    t.as_str(),
                    "object" | "array" | "string" | "integer" | "number" | "boolean"
                ) {
                    bail!("{path}/type: unknown type {t:?}");
                }
                out.insert("type".into(), t.into());
            }
            _ => bail!("{path}/type: {types:?} has no structural form"),
        }
        if nullable {
            out.insert("nullable".into(), true.into());
        }

        for (key, value) in node {
            let here = format!("{path}/{key}");
            match key.as_str() {
                // Annotations and bookkeeping the CRD has no use for.
                "$schema" | "$id" | "$comment" | "definitions" | "$defs" | "examples"
                | "readOnly" | "writeOnly" | "deprecated" | "contentEncoding"
                | "contentMediaType" => {}
                // Baton applies its defaults when it loads a policy; the API
                // server would write them into every stored object instead,
                // freezing today's defaults into them.
                "default" => {}
                "nullable" => {
                    if value == Value::Bool(true) {
                        out.insert(key, value);
                    }
                }
                "title" | "description" | "pattern" | "minLength" | "maxLength" | "minItems"
                | "maxItems" | "minProperties" | "maxProperties" | "multipleOf" | "example" => {
                    out.insert(key, value);
                }
                "minimum" | "maximum" => {
                    // A stricter bound from exclusiveMinimum/Maximum wins.
                    out.entry(key).or_insert(value);
                }
                "exclusiveMinimum" | "exclusiveMaximum" => {
                    let bound = if key == "exclusiveMinimum" {
                        "minimum"
                    } else {
                        "maximum"
                    };
                    match value {
                        // Draft 4 already has OpenAPI's form.
                        Value::Bool(_) => {
                            out.insert(key, value);
                        }
                        Value::Number(n) => {
                            out.insert(bound.into(), Value::Number(n));
                            out.insert(key, true.into());
                        }
                        _ => bail!("{here}: expected a number or a boolean"),
                    }
                }
                "format" => {
                    if value
                        .as_str()
                        .is_some_and(|f| KUBERNETES_FORMATS.contains(&f))
                    {
                        out.insert(key, value);
                    }
                }
                "enum" => {
                    let values = value
                        .as_array()
                        .with_context(|| format!("{here}: expected a list"))?;
                    // Kubernetes lists the null of a nullable enum itself.
                    let values: Vec<Value> =
                        values.iter().filter(|v| !v.is_null()).cloned().collect();
                    out.insert(key, Value::Array(values));
                }
                "const" => {
                    out.insert("enum".into(), Value::Array(vec![value]));
                }
                "required" => {
                    if value.as_array().is_some_and(|r| !r.is_empty()) {
                        out.insert(key, value);
                    }
                }
                "properties" => {
                    let fields = value
                        .as_object()
                        .with_context(|| format!("{here}: expected an object"))?;
                    let mut converted = match out.remove("properties") {
                        Some(Value::Object(hoisted)) => hoisted,
                        _ => Map::new(),
                    };
                    for (name, field) in fields {
                        let field = self.convert_node(field, &format!("{here}/{name}"), stack)?;
                        converted.insert(name.clone(), field);
                    }
                    out.insert(key, Value::Object(converted));
                }
                "additionalProperties" => match value {
                    // Unknown fields are pruned by the API server, and
                    // Kubernetes allows no `false` here.
                    Value::Bool(false) => {}
                    Value::Bool(true) => {
                        out.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
                    }
                    schema => {
                        let schema = self.convert_node(&schema, &here, stack)?;
                        out.insert(key, schema);
                    }
                },
                "items" => {
                    if value.is_array() {
                        bail!("{here}: tuple items have no structural form");
                    }
                    let items = self.convert_node(&value, &here, stack)?;
                    out.insert(key, items);
                }
                "uniqueItems" => {
                    // Kubernetes refuses uniqueItems (its check is
                    // quadratic); a list of scalars can be a set instead.
                    if value == Value::Bool(true) {
                        out.insert("x-kubernetes-list-type".into(), "set".into());
                    }
                }
                k if k.starts_with("x-kubernetes-") => {
                    out.insert(key, value);
                }
                _ => bail!(
                    "{here}: the keyword {key:?} has no structural OpenAPI form; \
                     teach xtask/src/deploy.rs how to translate it"
                ),
            }
        }

        // A set needs scalar items; drop the marker otherwise.
        if out.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set") {
            let scalar_items = out
                .get("items")
                .and_then(|i| i.get("type"))
                .and_then(Value::as_str)
                .is_some_and(|t| matches!(t, "string" | "integer" | "number" | "boolean"));
            if !scalar_items {
                out.remove("x-kubernetes-list-type");
            }
        }
        if out.contains_key("properties") && out.get("additionalProperties").is_some() {
            bail!("{path}: Kubernetes allows properties or additionalProperties, not both");
        }
        let typed = out.contains_key("type")
            || out.contains_key("x-kubernetes-int-or-string")
            || out.contains_key("x-kubernetes-preserve-unknown-fields");
        if !typed {
            // A node that says nothing about its value accepts anything.
            out.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
        } else if out.get("type").and_then(Value::as_str) == Some("object")
            && !out.contains_key("properties")
            && !out.contains_key("additionalProperties")
        {
            // An object with no fields listed would have all of them pruned.
            out.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
        }
        Ok(Value::Object(out))
    }

    /// Handles one `anyOf` or `oneOf`. References met while resolving the
    /// branches are left on `stack`; the caller pops them.
    fn convert_junctor(
        &self,
        junctor: &str,
        branches: &Value,
        path: &str,
        stack: &mut Vec<String>,
        state: JunctorState<'_>,
    ) -> Result<Junctor> {
        let JunctorState {
            node,
            out,
            types,
            nullable,
        } = state;
        let branches = branches
            .as_array()
            .with_context(|| format!("{path}/{junctor}: expected a list"))?;
        let mut resolved = Vec::new();
        for (i, branch) in branches.iter().enumerate() {
            let branch_path = format!("{path}/{junctor}/{i}");
            let Value::Object(branch) = branch else {
                bail!("{branch_path}: expected a schema object");
            };
            let (branch, _) = self.inline(branch, &branch_path, stack)?;
            resolved.push(branch);
        }
        let before = resolved.len();
        resolved.retain(|b| !is_null_schema(b));
        if resolved.len() < before {
            *nullable = true;
        }
        if resolved.is_empty() {
            bail!("{path}/{junctor}: no alternative but null");
        }
        if let [only] = resolved.as_slice() {
            if !out.is_empty() {
                bail!("{path}: both anyOf and oneOf with a single alternative are not translated");
            }
            // `T or null`: the node is T, nullable. The caller converts the
            // merged node again, which handles a type list or another
            // junctor inside T.
            let mut only = only.clone();
            if let Some(t) = only.remove("type") {
                match t {
                    Value::String(t) => {
                        types.insert(t);
                    }
                    Value::Array(list) => {
                        types.extend(list.iter().filter_map(Value::as_str).map(str::to_owned))
                    }
                    _ => bail!("{path}/{junctor}/0/type: expected a string or a list"),
                }
            }
            let mut merged = overlay(&only, std::mem::take(node));
            if !types.is_empty() {
                merged.insert(
                    "type".into(),
                    Value::Array(types.iter().cloned().map(Value::from).collect()),
                );
            }
            if *nullable {
                merged.insert("nullable".into(), true.into());
            }
            *node = merged;
            return Ok(Junctor::Merged);
        }
        if let Some((values, description)) = string_enum(&resolved) {
            types.insert("string".into());
            out.insert("enum".into(), Value::Array(values));
            if !node.contains_key("description") && !description.is_empty() {
                node.insert("description".into(), description.into());
            }
            return Ok(Junctor::Done);
        }
        let branch_types: BTreeSet<String> = resolved
            .iter()
            .filter_map(|b| b.get("type").and_then(Value::as_str).map(str::to_owned))
            .collect();
        if resolved.len() == 2
            && branch_types == BTreeSet::from(["integer".to_owned(), "string".to_owned()])
        {
            types.extend(branch_types);
            return Ok(Junctor::Done);
        }
        if resolved.iter().all(is_object_schema) {
            self.hoist_alternatives(&resolved, junctor, path, stack, out)?;
            types.insert("object".into());
            return Ok(Junctor::Done);
        }
        // A shorthand (a string) or its long form (an object), as file rules
        // are written: no structural type says both, so the CRD accepts any
        // value here and Baton's own parser checks it when it loads.
        if branch_types == BTreeSet::from(["object".to_owned(), "string".to_owned()]) {
            out.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
            if !node.contains_key("description") {
                node.insert(
                    "description".into(),
                    "A path, or an object with path and rights; checked by Baton when it loads the policy."
                        .into(),
                );
            }
            return Ok(Junctor::Done);
        }
        bail!(
            "{path}/{junctor}: these alternatives have no structural form \
             (only null, integer-or-string, string enums and objects are translated)"
        )
    }

    /// Alternatives between objects (`cidr` or `domain`, say): every
    /// field is declared on the node itself, as Kubernetes requires, and
    /// the alternatives keep only which fields each one requires.
    fn hoist_alternatives(
        &self,
        branches: &[Map<String, Value>],
        junctor: &str,
        path: &str,
        stack: &mut Vec<String>,
        out: &mut Map<String, Value>,
    ) -> Result<()> {
        let mut properties = match out.remove("properties") {
            Some(Value::Object(p)) => p,
            _ => Map::new(),
        };
        let mut skeletons = Vec::new();
        let mut every_branch_requires = true;
        for (i, branch) in branches.iter().enumerate() {
            let here = format!("{path}/{junctor}/{i}");
            for (key, _) in branch.iter() {
                if !matches!(
                    key.as_str(),
                    "type"
                        | "properties"
                        | "required"
                        | "additionalProperties"
                        | "description"
                        | "title"
                ) {
                    bail!(
                        "{here}/{key}: only properties and required are translated in object alternatives"
                    );
                }
            }
            if let Some(fields) = branch.get("properties").and_then(Value::as_object) {
                for (name, field) in fields {
                    let field =
                        self.convert_node(field, &format!("{here}/properties/{name}"), stack)?;
                    match properties.get(name) {
                        Some(existing) if *existing != field => bail!(
                            "{here}/properties/{name}: the alternatives give this field different schemas"
                        ),
                        _ => {
                            properties.insert(name.clone(), field);
                        }
                    }
                }
            }
            match branch.get("required").and_then(Value::as_array) {
                Some(required) if !required.is_empty() => {
                    skeletons.push(json!({"required": required}));
                }
                _ => every_branch_requires = false,
            }
        }
        out.insert("properties".into(), Value::Object(properties));
        // Without a required field per alternative, `oneOf` could not tell
        // them apart; Baton's own check then decides alone.
        if every_branch_requires {
            out.insert(junctor.into(), Value::Array(skeletons));
        }
        Ok(())
    }
}

/// What [`Converter::convert_junctor`] may change of the node it works on.
struct JunctorState<'s> {
    node: &'s mut Map<String, Value>,
    out: &'s mut Map<String, Value>,
    types: &'s mut BTreeSet<String>,
    nullable: &'s mut bool,
}

/// How a junctor was handled.
enum Junctor {
    /// Translated into `out` and `types`.
    Done,
    /// Reduced to a single schema, merged into the node, which must be
    /// converted again.
    Merged,
}

/// `node`'s keywords over `base`'s.
fn overlay(base: &Map<String, Value>, node: Map<String, Value>) -> Map<String, Value> {
    let mut merged = base.clone();
    for (key, value) in node {
        merged.insert(key, value);
    }
    merged
}

fn is_null_schema(schema: &Map<String, Value>) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
        || schema.get("const").is_some_and(Value::is_null)
        || schema
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(|e| e.len() == 1 && e[0].is_null())
}

fn is_object_schema(schema: &Map<String, Value>) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("object")
        || (schema.get("type").is_none()
            && (schema.contains_key("properties") || schema.contains_key("required")))
}

/// A `oneOf` of string constants, one per enum variant, as `schemars`
/// writes documented enums: the values, and a description listing what
/// each one means.
fn string_enum(branches: &[Map<String, Value>]) -> Option<(Vec<Value>, String)> {
    let mut values = Vec::new();
    let mut lines = Vec::new();
    for branch in branches {
        if branch.keys().any(|k| {
            !matches!(
                k.as_str(),
                "type" | "enum" | "const" | "description" | "title"
            )
        }) {
            return None;
        }
        if branch.get("type").is_some_and(|t| t != "string") {
            return None;
        }
        let these: Vec<Value> = match (branch.get("const"), branch.get("enum")) {
            (Some(c), None) => vec![c.clone()],
            (None, Some(Value::Array(e))) => e.clone(),
            _ => return None,
        };
        if !these.iter().all(Value::is_string) {
            return None;
        }
        if let Some(description) = branch.get("description").and_then(Value::as_str) {
            let names: Vec<&str> = these.iter().filter_map(Value::as_str).collect();
            lines.push(format!("`{}`: {}", names.join("`, `"), description.trim()));
        }
        values.extend(these);
    }
    Some((values, lines.join("\n")))
}

/// `path` relative to the workspace root when it is inside it.
fn display_relative(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
    root.and_then(|root| path.strip_prefix(root).ok())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Appends `value` as a block-style YAML document.
///
/// Strings are written plain only when YAML cannot read them as anything
/// else; every other string is written as a JSON string, which YAML reads
/// the same way. So the output means exactly what the JSON value means.
pub fn write_yaml_document(out: &mut String, value: &Value) {
    write_yaml_value(out, value, 0);
    if !out.ends_with('\n') {
        out.push('\n');
    }
}

fn write_yaml_value(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            // Sorted whatever serde_json's features: the output must not
            // depend on which other crates share the build.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    pad(out, indent);
                }
                out.push_str(&yaml_scalar_string(key));
                out.push(':');
                write_yaml_child(out, item, indent);
            }
        }
        Value::Array(list) if !list.is_empty() => {
            for (i, item) in list.iter().enumerate() {
                if i > 0 {
                    pad(out, indent);
                }
                out.push_str("- ");
                write_yaml_value(out, item, indent + 2);
            }
        }
        scalar => {
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

/// The value of a mapping entry, after `key:`.
fn write_yaml_child(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            pad(out, indent + 2);
            write_yaml_value(out, value, indent + 2);
        }
        Value::Array(list) if !list.is_empty() => {
            out.push('\n');
            pad(out, indent + 2);
            write_yaml_value(out, value, indent + 2);
        }
        scalar => {
            out.push(' ');
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    let _ = write!(out, "{:indent$}", "");
}

fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => yaml_scalar_string(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// `s` plain when that is unambiguous, else JSON-quoted.
fn yaml_scalar_string(s: &str) -> String {
    // Words YAML 1.1 (which many Kubernetes tools still speak) reads as
    // booleans or null.
    const RESERVED: &[&str] = &[
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~",
    ];
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-' | ' '))
        && !s.ends_with(' ')
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schema in the shape `schemars` writes for Baton's policy types
    /// (draft 7, `definitions`, nullable options, documented enums, a port
    /// that is a number or a range, rules that name a CIDR or a domain).
    fn sample() -> Value {
        json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "title": "AgentPolicyDocument",
            "description": "One policy document.",
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                "apiVersion": {"type": "string", "enum": ["baton.dev/v1alpha1"]},
                "kind": {"type": "string", "const": "AgentPolicy"},
                "metadata": {"$ref": "#/definitions/Metadata"},
                "spec": {"$ref": "#/definitions/PolicySpec"}
            },
            "additionalProperties": false,
            "definitions": {
                "Metadata": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                    "additionalProperties": false
                },
                "PolicySpec": {
                    "type": "object",
                    "required": ["selector"],
                    "properties": {
                        "selector": {"$ref": "#/definitions/Selector"},
                        "mode": {
                            "description": "Enforce or audit.",
                            "default": "enforce",
                            "allOf": [{"$ref": "#/definitions/Mode"}]
                        },
                        "egress": {
                            "default": null,
                            "anyOf": [{"$ref": "#/definitions/EgressSpec"}, {"type": "null"}]
                        }
                    },
                    "additionalProperties": false
                },
                "Selector": {
                    "type": "object",
                    "properties": {
                        "agent": {"type": ["string", "null"]},
                        "cgroups": {"type": "array", "items": {"type": "string"}, "uniqueItems": true}
                    },
                    "additionalProperties": false
                },
                "Mode": {
                    "oneOf": [
                        {"description": "Deny what the policy denies.", "type": "string", "enum": ["enforce"]},
                        {"description": "Decide and record, never deny.", "type": "string", "const": "audit"}
                    ]
                },
                "EgressSpec": {
                    "type": "object",
                    "properties": {
                        "default": {"type": "string", "enum": ["allow", "deny"]},
                        "allow": {"type": "array", "items": {"$ref": "#/definitions/EgressRule"}}
                    },
                    "additionalProperties": false
                },
                "EgressRule": {
                    "type": "object",
                    "properties": {
                        "ports": {"type": "array", "items": {"$ref": "#/definitions/Port"}},
                        "protocol": {"type": "string", "enum": ["any", "tcp", "udp"]}
                    },
                    "oneOf": [
                        {"properties": {"cidr": {"type": "string"}}, "required": ["cidr"]},
                        {"properties": {"domain": {"type": "string"}}, "required": ["domain"]}
                    ],
                    "additionalProperties": false
                },
                "Port": {
                    "anyOf": [
                        {"type": "integer", "format": "uint16", "minimum": 0.0, "maximum": 65535.0},
                        {"type": "string", "pattern": "^[0-9]+(-[0-9]+)?$"}
                    ]
                }
            }
        })
    }

    /// Kubernetes' structural-schema rules, as far as a generator can break
    /// them: every node typed (or int-or-string / preserve-unknown), no
    /// `$ref`, no type, description, default, nullable or
    /// additionalProperties inside a junctor (except int-or-string's own
    /// two types), no `additionalProperties` beside `properties`.
    fn assert_structural(node: &Value, path: &str, in_junctor: bool) {
        let map = node
            .as_object()
            .unwrap_or_else(|| panic!("{path}: not an object"));
        assert!(!map.contains_key("$ref"), "{path}: $ref left");
        assert!(
            !map.contains_key("definitions") && !map.contains_key("$defs"),
            "{path}: definitions left"
        );
        assert!(!map.contains_key("default"), "{path}: default left");
        if in_junctor {
            for key in [
                "type",
                "description",
                "default",
                "nullable",
                "additionalProperties",
            ] {
                assert!(!map.contains_key(key), "{path}: {key} inside a junctor");
            }
        } else {
            assert!(
                map.contains_key("type")
                    || map.contains_key("x-kubernetes-int-or-string")
                    || map.contains_key("x-kubernetes-preserve-unknown-fields"),
                "{path}: no type"
            );
        }
        if let Some(t) = map.get("type") {
            assert!(t.is_string(), "{path}: type is not one string");
        }
        assert!(
            !(map.contains_key("properties") && map.contains_key("additionalProperties")),
            "{path}: properties and additionalProperties"
        );
        if let Some(Value::Object(props)) = map.get("properties") {
            for (name, prop) in props {
                assert_structural(prop, &format!("{path}/properties/{name}"), in_junctor);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = map.get(key) {
                assert_structural(child, &format!("{path}/{key}"), in_junctor);
            }
        }
        for junctor in ["anyOf", "oneOf", "allOf"] {
            if let Some(Value::Array(branches)) = map.get(junctor) {
                for (i, branch) in branches.iter().enumerate() {
                    assert_structural(branch, &format!("{path}/{junctor}/{i}"), true);
                }
            }
        }
    }

    fn spec_of(schema: &Value) -> Value {
        open_api_schema(schema).unwrap()["properties"]["spec"].clone()
    }

    #[test]
    fn sample_becomes_a_structural_schema() {
        let schema = open_api_schema(&sample()).unwrap();
        assert_structural(&schema, "", false);
        assert_eq!(schema["required"], json!(["spec"]));
        assert_eq!(schema["properties"]["metadata"], json!({"type": "object"}));
        assert_eq!(schema["properties"]["apiVersion"]["type"], "string");
        assert_eq!(schema["description"], "One policy document.");
        let text = schema.to_string();
        assert!(
            !text.contains("$schema") && !text.contains("#/definitions"),
            "{text}"
        );
    }

    #[test]
    fn references_are_inlined_and_siblings_win() {
        let spec = spec_of(&sample());
        assert_eq!(spec["required"], json!(["selector"]));
        let mode = &spec["properties"]["mode"];
        assert_eq!(mode["type"], "string");
        assert_eq!(mode["enum"], json!(["enforce", "audit"]));
        assert_eq!(mode["description"], "Enforce or audit.");
        assert!(mode.get("default").is_none());
    }

    #[test]
    fn documented_enum_variants_describe_the_field() {
        let mut schema = sample();
        schema["definitions"]["PolicySpec"]["properties"]["mode"] =
            json!({"$ref": "#/definitions/Mode"});
        let mode = &spec_of(&schema)["properties"]["mode"];
        assert_eq!(
            mode["description"],
            "`enforce`: Deny what the policy denies.\n`audit`: Decide and record, never deny."
        );
    }

    #[test]
    fn null_alternatives_become_nullable() {
        let spec = spec_of(&sample());
        let egress = &spec["properties"]["egress"];
        assert_eq!(egress["type"], "object");
        assert_eq!(egress["nullable"], true);
        assert!(egress["properties"]["allow"]["items"]["properties"]["protocol"].is_object());
        let agent = &spec["properties"]["selector"]["properties"]["agent"];
        assert_eq!(agent, &json!({"type": "string", "nullable": true}));
    }

    #[test]
    fn a_number_or_a_string_becomes_int_or_string() {
        let spec = spec_of(&sample());
        let port = &spec["properties"]["egress"]["properties"]["allow"]["items"]["properties"]["ports"]
            ["items"];
        assert_eq!(port, &json!({"x-kubernetes-int-or-string": true}));
    }

    #[test]
    fn object_alternatives_are_hoisted() {
        let spec = spec_of(&sample());
        let rule = &spec["properties"]["egress"]["properties"]["allow"]["items"];
        assert_eq!(rule["type"], "object");
        assert_eq!(rule["properties"]["cidr"], json!({"type": "string"}));
        assert_eq!(rule["properties"]["domain"], json!({"type": "string"}));
        assert_eq!(
            rule["oneOf"],
            json!([{"required": ["cidr"]}, {"required": ["domain"]}])
        );
    }

    #[test]
    fn unique_scalar_lists_become_sets() {
        let spec = spec_of(&sample());
        let cgroups = &spec["properties"]["selector"]["properties"]["cgroups"];
        assert_eq!(cgroups["x-kubernetes-list-type"], "set");
        assert!(cgroups.get("uniqueItems").is_none());
    }

    #[test]
    fn draft_2020_defs_and_exclusive_bounds() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"spec": {"$ref": "#/$defs/Spec"}},
            "$defs": {
                "Spec": {
                    "type": "object",
                    "properties": {
                        "ttl": {"type": "integer", "exclusiveMinimum": 0, "format": "int64"},
                        "free": {},
                        "any": true,
                        "opaque": {"type": "object"}
                    }
                }
            }
        });
        let spec = spec_of(&schema);
        assert_structural(&spec, "spec", false);
        assert_eq!(
            spec["properties"]["ttl"],
            json!({"type": "integer", "minimum": 0, "exclusiveMinimum": true, "format": "int64"})
        );
        for name in ["free", "any"] {
            assert_eq!(
                spec["properties"][name],
                json!({"x-kubernetes-preserve-unknown-fields": true})
            );
        }
        assert_eq!(
            spec["properties"]["opaque"],
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
        );
    }

    #[test]
    fn a_schema_of_the_spec_alone_is_the_spec() {
        let schema = json!({"type": "object", "properties": {"mode": {"type": "string"}}});
        let open_api = open_api_schema(&schema).unwrap();
        assert_eq!(
            open_api["properties"]["spec"]["properties"]["mode"]["type"],
            "string"
        );
        assert_eq!(open_api["required"], json!(["spec"]));
    }

    #[test]
    fn untranslatable_schemas_are_errors() {
        let cases = [
            (
                json!({"properties": {"spec": {"$ref": "#/definitions/Node"}}, "definitions": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/definitions/Node"}}}}}),
                "recursive",
            ),
            (
                json!({"properties": {"spec": {"type": "object", "patternProperties": {"^x": {"type": "string"}}}}}),
                "patternProperties",
            ),
            (
                json!({"properties": {"spec": {"$ref": "other.json#/x"}}}),
                "cannot resolve",
            ),
            (
                json!({"properties": {"spec": {"$ref": "#/definitions/Missing"}}, "definitions": {}}),
                "not defined",
            ),
            (
                json!({"properties": {"spec": {"$ref": "#/definitions/Node"}}, "definitions": {"Node": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/definitions/Node"}, {"type": "null"}]}}}}}),
                "recursive",
            ),
            (
                json!({"properties": {"spec": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}}}),
                "no structural form",
            ),
            (
                json!({"properties": {"spec": {"type": "array", "items": [{"type": "string"}]}}}),
                "tuple",
            ),
            (
                json!({"properties": {"spec": {"type": "null"}}}),
                "only be null",
            ),
        ];
        for (schema, expected) in cases {
            let error = format!("{:#}", open_api_schema(&schema).unwrap_err());
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }

    #[test]
    fn the_crd_names_the_group_version_and_kind() {
        let crd = crd(&sample()).unwrap();
        assert_eq!(crd["metadata"]["name"], "agentpolicies.baton.dev");
        assert_eq!(crd["spec"]["group"], GROUP);
        assert_eq!(crd["spec"]["names"]["kind"], "AgentPolicy");
        assert_eq!(crd["spec"]["versions"][0]["name"], VERSION);
        assert_eq!(crd["spec"]["versions"][0]["storage"], true);
    }

    #[test]
    fn yaml_quotes_what_yaml_would_misread() {
        let value = json!({
            "plain": "agentpolicies.baton.dev",
            "yes": "no",
            "number": "8080",
            "colon": "a: b",
            "pattern": "^[0-9]+(-[0-9]+)?$",
            "multi": "line one\nline two",
            "list": [1, "two", {"three": 3, "four": [true, null]}],
            "empty": {},
            "none": [],
            "nested": [[1, 2], []]
        });
        let mut text = String::new();
        write_yaml_document(&mut text, &value);
        assert_eq!(
            text,
            "colon: \"a: b\"\n\
             empty: {}\n\
             list:\n  - 1\n  - two\n  - four:\n      - true\n      - null\n    three: 3\n\
             multi: \"line one\\nline two\"\n\
             nested:\n  - - 1\n    - 2\n  - []\n\
             none: []\n\
             number: \"8080\"\n\
             pattern: \"^[0-9]+(-[0-9]+)?$\"\n\
             plain: agentpolicies.baton.dev\n\
             \"yes\": \"no\"\n"
        );
    }

    /// The CRD in the repository is what the current schema generates.
    #[test]
    fn the_committed_crd_is_up_to_date() {
        let root = crate::workspace_root();
        let schema_path = root.join(SCHEMA_PATH);
        let crd_path = root.join(CRD_PATH);
        let Ok(text) = std::fs::read_to_string(&schema_path) else {
            assert!(
                !crd_path.exists(),
                "{} exists but {} does not",
                crd_path.display(),
                schema_path.display()
            );
            return;
        };
        let schema: Value = serde_json::from_str(&text).unwrap();
        let expected = crd_yaml(&schema, SCHEMA_PATH).unwrap();
        let committed = std::fs::read_to_string(&crd_path).unwrap_or_default();
        assert!(
            committed == expected,
            "{} is not what {} generates: run `cargo xtask crd`",
            crd_path.display(),
            schema_path.display()
        );
    }
}
