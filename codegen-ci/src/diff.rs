//! The element-level difference between two descriptor sets: what a release added,
//! deprecated, removed or changed. It feeds the CHANGELOG and tells additions
//! (a minor bump) from no change; buf decides what is breaking.

use std::collections::BTreeMap;

use prost_types::{
    FieldDescriptorProto, FileDescriptorSet, field_descriptor_proto::Label, field_descriptor_proto::Type,
};

/// One element of the contract: its kind, its signature and whether it is deprecated.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Element {
    kind: &'static str,
    signature: String,
    deprecated: bool,
    file: String,
}

/// The difference between an older and a newer contract, by element full name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// New elements: `(kind, full name)`.
    pub added: Vec<(String, String)>,
    /// Elements newly marked deprecated.
    pub deprecated: Vec<(String, String)>,
    /// Elements gone.
    pub removed: Vec<(String, String)>,
    /// Elements whose signature (number, type, label, streaming, file) changed.
    pub changed: Vec<(String, String)>,
}

impl Diff {
    /// Computes the difference; files of `google/` (well-known types) are skipped.
    pub fn between(old: &FileDescriptorSet, new: &FileDescriptorSet) -> Diff {
        let (old, new) = (elements(old), elements(new));
        let mut diff = Diff::default();
        for (name, e) in &new {
            match old.get(name) {
                None => diff.added.push((e.kind.to_string(), name.clone())),
                Some(o) => {
                    if o.signature != e.signature || o.kind != e.kind || o.file != e.file {
                        diff.changed.push((e.kind.to_string(), name.clone()));
                    }
                    if e.deprecated && !o.deprecated {
                        diff.deprecated.push((e.kind.to_string(), name.clone()));
                    }
                }
            }
        }
        for (name, o) in &old {
            if !new.contains_key(name) {
                diff.removed.push((o.kind.to_string(), name.clone()));
            }
        }
        diff
    }

    /// Whether nothing but comments or formatting changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.deprecated.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// The CHANGELOG lines of this difference (Markdown list items).
    pub fn changelog(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (title, list) in [
            ("Added", &self.added),
            ("Deprecated", &self.deprecated),
            ("Removed", &self.removed),
            ("Changed", &self.changed),
        ] {
            for (kind, name) in list {
                lines.push(format!("- {title} {kind} `{name}`"));
            }
        }
        if lines.is_empty() {
            lines.push("- No element changed (comments or documentation only).".to_string());
        }
        lines
    }
}

fn elements(set: &FileDescriptorSet) -> BTreeMap<String, Element> {
    let mut out = BTreeMap::new();
    for file in &set.file {
        let path = file.name().to_string();
        if path.starts_with("google/") {
            continue;
        }
        let pkg = file.package();
        let mut put = |kind: &'static str, name: String, signature: String, deprecated: bool| {
            out.insert(name, Element { kind, signature, deprecated, file: path.clone() });
        };
        for m in &file.message_type {
            messages(&mut put, pkg, m);
        }
        for e in &file.enum_type {
            enums(&mut put, pkg, e);
        }
        for s in &file.service {
            let sname = format!("{pkg}.{}", s.name());
            let dep = s.options.as_ref().and_then(|o| o.deprecated).unwrap_or(false);
            put("service", sname.clone(), String::new(), dep);
            for m in &s.method {
                let stream = |yes: Option<bool>| if yes.unwrap_or(false) { "stream " } else { "" };
                let sig = format!(
                    "({}{}) returns ({}{})",
                    stream(m.client_streaming),
                    m.input_type(),
                    stream(m.server_streaming),
                    m.output_type()
                );
                let dep = m.options.as_ref().and_then(|o| o.deprecated).unwrap_or(false);
                put("rpc", format!("{sname}.{}", m.name()), sig, dep);
            }
        }
    }
    out
}

type Put<'a> = dyn FnMut(&'static str, String, String, bool) + 'a;

fn messages(put: &mut Put<'_>, scope: &str, m: &prost_types::DescriptorProto) {
    let name = format!("{scope}.{}", m.name());
    let dep = m.options.as_ref().and_then(|o| o.deprecated).unwrap_or(false);
    put("message", name.clone(), String::new(), dep);
    for f in &m.field {
        let dep = f.options.as_ref().and_then(|o| o.deprecated).unwrap_or(false);
        put("field", format!("{name}.{}", f.name()), field_signature(f), dep);
    }
    for nested in &m.nested_type {
        messages(put, &name, nested);
    }
    for e in &m.enum_type {
        enums(put, &name, e);
    }
}

fn enums(put: &mut Put<'_>, scope: &str, e: &prost_types::EnumDescriptorProto) {
    let name = format!("{scope}.{}", e.name());
    let dep = e.options.as_ref().and_then(|o| o.deprecated).unwrap_or(false);
    put("enum", name.clone(), String::new(), dep);
    // Enum values are scoped like their enum's siblings in protobuf, but naming them
    // under the enum reads better in a changelog.
    for v in &e.value {
        let dep = v.options.as_ref().and_then(|o| o.deprecated).unwrap_or(false);
        put("enum value", format!("{name}.{}", v.name()), format!("= {}", v.number()), dep);
    }
}

fn field_signature(f: &FieldDescriptorProto) -> String {
    let label = match f.label() {
        Label::Repeated => "repeated ",
        _ if f.proto3_optional() => "optional ",
        _ => "",
    };
    let ty = match f.r#type() {
        Type::Message | Type::Enum | Type::Group => f.type_name().to_string(),
        other => format!("{other:?}").to_lowercase(),
    };
    let oneof = f.oneof_index.filter(|_| !f.proto3_optional()).map(|i| format!(" oneof#{i}")).unwrap_or_default();
    format!("{label}{ty} = {}{oneof}", f.number())
}
