//! Validation and compilation of a LuaLibrary into the `moongate.v1`
//! `Library`: its modules, by the same name rule and compiler as a route's.

use moongate_proto::v1 as pb;

use super::{Compiler, compile_modules};
use crate::LibraryKey;
use crate::crd::LuaLibrary;
use crate::error::Problem;

/// Validates and compiles one LuaLibrary. Every problem names the library,
/// the module (`module NAME`) and, for Lua, the line.
pub fn compile_library(compiler: &Compiler, library: &LuaLibrary) -> Result<pb::Library, Vec<Problem>> {
    let namespace = library
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let name = library.metadata.name.clone().unwrap_or_default();
    let key = LibraryKey::new(&namespace, &name);
    let mut problems = Vec::new();
    if name.is_empty() {
        problems.push(Problem::new("metadata.name is required"));
    }
    if library.spec.modules.is_empty() {
        problems.push(Problem::new("spec.modules must not be empty"));
    }
    let modules = compile_modules(
        compiler,
        library.spec.modules.iter(),
        |module| format!("{module}(library {key})"),
        &mut problems,
    );
    if !problems.is_empty() {
        return Err(problems
            .into_iter()
            .map(|p| Problem {
                library: Some(key.clone()),
                ..p
            })
            .collect());
    }
    Ok(pb::Library {
        namespace,
        name,
        generation: library.metadata.generation.unwrap_or(0),
        modules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_documents;

    fn library(yaml_modules: &str) -> LuaLibrary {
        let yaml = format!(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaLibrary\nmetadata: {{name: shared, namespace: team}}\nspec:\n  modules:\n{yaml_modules}"
        );
        parse_documents(&yaml, None).unwrap().libraries.remove(0)
    }

    #[test]
    fn modules_with_hyphens_compile_to_bytecode_named_after_the_library() {
        let compiled = compile_library(
            &Compiler::new(),
            &library("    resty.jwt-validators: 'return {}'\n    resty.jit-uuid: 'return {v = 4}'\n"),
        )
        .unwrap();
        assert_eq!(
            (compiled.namespace.as_str(), compiled.name.as_str()),
            ("team", "shared")
        );
        let names: Vec<&str> = compiled.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["resty.jit-uuid", "resty.jwt-validators"]);
        let chunk = compiled.modules[0].chunk.as_ref().unwrap();
        assert_eq!(&chunk.bytecode[..3], b"\x1bLJ");
        assert_eq!(chunk.name, "=resty.jit-uuid(library team/shared)");
    }

    #[test]
    fn a_syntax_error_names_the_library_the_module_and_the_line() {
        let errs = compile_library(
            &Compiler::new(),
            &library("    good: 'return {}'\n    resty.jwt-validators: |\n      local M = {}\n      function M.check(\n      return M\n"),
        )
        .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let p = &errs[0];
        assert_eq!(p.library, Some(LibraryKey::new("team", "shared")));
        assert_eq!(p.phase.as_deref(), Some("module resty.jwt-validators"));
        assert_eq!(p.line, Some(3));
        let text = p.to_string();
        assert!(
            text.starts_with("library team/shared: module resty.jwt-validators: line 3: "),
            "{text}"
        );
    }

    #[test]
    fn a_bad_module_name_is_refused_with_the_schemas_message() {
        let errs = compile_library(
            &Compiler::new(),
            &library("    'resty/evil': 'return {}'\n    \"x\\n\": 'return {}'\n    -dash: 'return {}'\n"),
        )
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text.iter().all(|t| t.contains(crate::crd::MODULE_NAME_MESSAGE)),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.contains(r#""resty/evil""#)), "{text:?}");
    }
}
