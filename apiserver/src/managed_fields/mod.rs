//! Field ownership and server-side apply, as Kubernetes' structured-merge-diff does them.
//!
//! Owns `metadata.managedFields`: which manager (`fieldManager`, or the User-Agent prefix) set
//! which field, through an apply (`PATCH` with `application/apply-patch+yaml`) or any other
//! write (an update). [`FieldManager::apply`] merges an applied configuration into the live
//! object, removes the fields its applier dropped since its last apply (unless someone else
//! owns them) and refuses to change fields other managers own unless forced.
//! [`FieldManager::track_update`] records who changed what on create, update and ordinary
//! patch. Pure functions over `serde_json::Value`; the REST layer calls them.
//!
//! Lists and maps follow the schema ([`Schema`]): associative lists merge and are owned item by
//! item, set lists value by value, string maps entry by entry, anything atomic as a whole.
//! [`BuiltinSchema`] tables the built-in kinds; custom resources get atomic lists.
//!
//! Where this differs from Kubernetes, for want of its typed schemas: no version conversion
//! (an apply must use the stored apiVersion); whether an updated struct node gets `".": {}`
//! follows a table of Go value fields ([`Schema::always_present`]) rather than Go's zero
//! values; the built-in list and map table covers the common types, not every annotation;
//! unions and per-field defaults other than list keys are not modelled.

mod conflict;
mod entries;
mod last_applied;
mod merge;
mod path;
mod schema;
mod walk;

#[cfg(test)]
mod tests;

use serde_json::Value;

pub use conflict::{conflicts_message, ApplyError, Conflict};
pub use entries::{
    decode_managed_fields, ManagedFieldsEntry, Operation, ANCIENT_CHANGES_MANAGER, FIELDS_V1,
    MAX_UPDATE_MANAGERS,
};
pub use path::{FieldSet, Path, PathElement};
pub use schema::{BuiltinSchema, ListKey, ListKind, ObjectKind, Schema};

use entries::{
    cap_update_entries, is_reset_request, keep_old_timestamps_if_unchanged, recorded_entries,
    store_entries, take_managed_fields, without_managed_fields, Identity,
};
use last_applied::{last_applied_fields, refresh_annotation, KUBECTL_APPLY_MANAGER};
use merge::drop_null_fields;
use walk::Walker;

/// The longest field manager name Kubernetes accepts, in bytes.
pub const FIELD_MANAGER_MAX_LENGTH: usize = 128;

/// The updater that owns the fields an object had before its first apply.
pub const BEFORE_FIRST_APPLY_MANAGER: &str = "before-first-apply";

/// Fields nobody owns: the object's identity and what the server sets. As in Kubernetes these
/// exact paths are dropped from every set, after merging (so an apply still keeps them).
const NEVER_TRACKED: &[&[&str]] = &[
    &["apiVersion"],
    &["kind"],
    &["metadata"],
    &["metadata", "name"],
    &["metadata", "namespace"],
    &["metadata", "uid"],
    &["metadata", "resourceVersion"],
    &["metadata", "generation"],
    &["metadata", "creationTimestamp"],
    &["metadata", "deletionTimestamp"],
    &["metadata", "deletionGracePeriodSeconds"],
    &["metadata", "selfLink"],
    &["metadata", "managedFields"],
];

/// An apply: who applies, whether conflicts are overridden, and the time to record.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions<'a> {
    pub manager: &'a str,
    pub force: bool,
    /// The subresource applied to (`status`, `scale`), if any.
    pub subresource: Option<&'a str>,
    /// RFC 3339, e.g. `2024-05-01T12:00:00Z`.
    pub now: &'a str,
}

/// A create, update or non-apply patch: who wrote, and the time to record.
#[derive(Debug, Clone, Copy)]
pub struct UpdateOptions<'a> {
    pub manager: &'a str,
    pub subresource: Option<&'a str>,
    pub now: &'a str,
}

/// Applies and tracks updates for one type, described by its schema.
#[derive(Debug, Clone)]
pub struct FieldManager<S = BuiltinSchema> {
    schema: S,
    ignored: Vec<Vec<PathElement>>,
    max_update_managers: usize,
}

impl FieldManager<BuiltinSchema> {
    /// The field manager for a built-in kind (or, for any other kind, an untyped one).
    pub fn for_kind(kind: &str) -> Self {
        FieldManager::new(BuiltinSchema::for_kind(kind))
    }
}

impl<S: Schema> FieldManager<S> {
    pub fn new(schema: S) -> Self {
        FieldManager {
            schema,
            ignored: Vec::new(),
            max_update_managers: MAX_UPDATE_MANAGERS,
        }
    }

    /// Leaves `field_path` and everything below it unowned, as Kubernetes' reset fields do:
    /// e.g. `status` on the main resource of a type with a status subresource, `spec` on its
    /// `status` subresource.
    pub fn ignoring(mut self, field_path: &[&str]) -> Self {
        self.ignored
            .push(field_path.iter().map(|n| PathElement::field(*n)).collect());
        self
    }

    fn walker(&self) -> Walker<'_> {
        Walker {
            schema: &self.schema,
        }
    }

    fn without_ignored(&self, mut set: FieldSet) -> FieldSet {
        for prefix in &self.ignored {
            set.remove_subtree(prefix);
        }
        set
    }

    /// Server-side apply of `config` onto `live` (`None` when the apply creates the object).
    /// Returns the object to store, `metadata.managedFields` included; when nothing changes
    /// it equals `live`.
    pub fn apply(
        &self,
        live: Option<&Value>,
        config: &Value,
        options: &ApplyOptions<'_>,
    ) -> Result<Value, ApplyError> {
        validate_config(live, config)?;
        let walker = self.walker();
        let applied = self.without_ignored(walker.field_set(config).map_err(ApplyError::Invalid)?);
        let live_object = live.map(without_managed_fields);
        let mut entries = self.entries_before_apply(live, live_object.as_ref(), options.now);
        let api_version = text_field(config, "apiVersion");
        let applier = Identity::new(
            options.manager,
            Operation::Apply,
            api_version,
            options.subresource,
        );
        let previous = take_entry(&mut entries, &applier);

        let mut merged = walker.merge(live_object.as_ref(), config);
        if let Some(previous) = &previous {
            let mut owned = applied.clone();
            entries.iter().for_each(|e| owned.union_with(&e.fields));
            walker.prune(&mut merged, &previous.fields, &owned);
        }
        let comparison = walker.compare(live_object.as_ref(), Some(&merged));
        let changed = comparison.changed();
        if !options.force {
            refuse_conflicts(&entries, &changed, live, options.manager, &walker)?;
        }
        drop_null_fields(&mut merged);
        // Forced (or allowed) conflicts move to the applier.
        disown(&mut entries, &changed, &comparison.removed);
        entries.push(ManagedFieldsEntry {
            manager: options.manager.into(),
            operation: Operation::Apply,
            api_version: api_version.into(),
            time: Some(options.now.into()),
            subresource: options.subresource.map(Into::into),
            fields: never_tracked_removed(applied),
        });
        if options.manager == KUBECTL_APPLY_MANAGER {
            refresh_annotation(&mut merged, config);
        }
        cap_update_entries(&mut entries, self.max_update_managers);
        store_entries(&mut merged, entries);
        if let Some(live) = live {
            keep_old_timestamps_if_unchanged(live, &mut merged);
        }
        Ok(merged)
    }

    /// The live object's entries; for an object without any, one owning all its fields.
    fn entries_before_apply(
        &self,
        live: Option<&Value>,
        live_object: Option<&Value>,
        now: &str,
    ) -> Vec<ManagedFieldsEntry> {
        let entries = live.map(recorded_entries).unwrap_or_default();
        if !entries.is_empty() {
            return entries;
        }
        live_object
            .and_then(|l| self.before_first_apply(l, now))
            .into_iter()
            .collect()
    }

    /// Kubernetes gives the fields of an object without managed fields (written before they
    /// were tracked, or reset since) to `before-first-apply`, so that a first apply cannot
    /// silently change them.
    fn before_first_apply(&self, live: &Value, now: &str) -> Option<ManagedFieldsEntry> {
        let existing = self.walker().compare(None, Some(live)).changed();
        let existing = self.without_ignored(never_tracked_removed(existing));
        (!existing.is_empty()).then(|| ManagedFieldsEntry {
            manager: BEFORE_FIRST_APPLY_MANAGER.into(),
            operation: Operation::Update,
            api_version: text_field(live, "apiVersion").into(),
            time: Some(now.into()),
            subresource: None,
            fields: existing,
        })
    }

    /// Records a create (`old` is `None`), update or non-apply patch in `new`'s
    /// `metadata.managedFields`: the fields it added or changed become the writer's (and stop
    /// being anyone else's); fields it removed leave every set.
    ///
    /// `managedFields` sent in `new` replace the recorded ones (not on a subresource): a valid
    /// non-empty list is taken as is, `[]` or `[{}]` clears them before this write is
    /// recorded, an invalid list is ignored.
    pub fn track_update(&self, old: Option<&Value>, new: &mut Value, options: &UpdateOptions<'_>) {
        let requested = take_managed_fields(new);
        let mut entries = starting_entries(old, requested.as_ref(), options.subresource);
        // The comparison leaves `metadata.managedFields` out of both sides.
        let comparison = self.walker().compare(old, Some(new));
        let changed = comparison.changed();
        disown(&mut entries, &changed, &comparison.removed);
        let written = self.without_ignored(never_tracked_removed(changed));
        if !written.is_empty() {
            let api_version = text_field(new, "apiVersion").to_string();
            let updater = Identity::new(
                options.manager,
                Operation::Update,
                &api_version,
                options.subresource,
            );
            match entries.iter_mut().find(|e| e.identity() == updater) {
                Some(entry) => {
                    entry.fields.union_with(&written);
                    entry.time = Some(options.now.into());
                }
                None => entries.push(ManagedFieldsEntry {
                    manager: options.manager.into(),
                    operation: Operation::Update,
                    api_version,
                    time: Some(options.now.into()),
                    subresource: options.subresource.map(Into::into),
                    fields: written,
                }),
            }
        }
        cap_update_entries(&mut entries, self.max_update_managers);
        store_entries(new, entries);
        if let Some(old) = old {
            keep_old_timestamps_if_unchanged(old, new);
        }
    }
}

/// Server-side apply with the built-in schema of `config`'s kind; see [`FieldManager::apply`].
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApplyError> {
    let options = ApplyOptions {
        manager,
        force,
        subresource: None,
        now,
    };
    FieldManager::for_kind(text_field(config, "kind")).apply(live, config, &options)
}

/// Records a write with the built-in schema of `new`'s kind; see
/// [`FieldManager::track_update`].
pub fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let options = UpdateOptions {
        manager,
        subresource,
        now,
    };
    let manager = FieldManager::for_kind(text_field(new, "kind"));
    manager.track_update(old, new, &options);
}

/// The manager of a write without `fieldManager`: the User-Agent up to its first `/`
/// (`kubectl/v1.30.0 (linux/amd64)` → `kubectl`), without unprintable characters, cut to
/// [`FIELD_MANAGER_MAX_LENGTH`] bytes — as Kubernetes derives it.
pub fn default_manager(user_agent: &str) -> String {
    let prefix = user_agent.split('/').next().unwrap_or_default();
    let mut manager = String::new();
    for c in prefix.chars().filter(|&c| is_printable(c)) {
        if manager.len() + c.len_utf8() > FIELD_MANAGER_MAX_LENGTH {
            break;
        }
        manager.push(c);
    }
    manager
}

/// Checks a `fieldManager` query parameter as Kubernetes does; an apply must name one.
pub fn validate_field_manager(manager: &str, is_apply: bool) -> Result<(), String> {
    if manager.is_empty() && is_apply {
        return Err("fieldManager: Required value: is required for apply patch".into());
    }
    if manager.len() > FIELD_MANAGER_MAX_LENGTH {
        return Err(format!(
            "fieldManager: Too long: may not be more than {FIELD_MANAGER_MAX_LENGTH} bytes"
        ));
    }
    match manager.char_indices().find(|&(_, c)| !is_printable(c)) {
        Some((at, c)) => Err(format!(
            "fieldManager: Invalid value: {manager:?}: invalid character U+{:04X} (at position {at})",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

fn is_printable(c: char) -> bool {
    c == ' ' || !(c.is_control() || c.is_whitespace())
}

fn text_field<'v>(object: &'v Value, name: &str) -> &'v str {
    object.get(name).and_then(Value::as_str).unwrap_or_default()
}

fn never_tracked_removed(set: FieldSet) -> FieldSet {
    let mut never = FieldSet::default();
    for path in NEVER_TRACKED {
        never.insert(&Path::fields(path).0);
    }
    set.difference(&never)
}

fn take_entry(
    entries: &mut Vec<ManagedFieldsEntry>,
    identity: &Identity,
) -> Option<ManagedFieldsEntry> {
    let index = entries.iter().position(|e| e.identity() == *identity)?;
    Some(entries.remove(index))
}

/// The entries an update starts from: those the client sent, unless it wrote to a
/// subresource or sent none (or garbage); none at all when it asked for a reset.
fn starting_entries(
    old: Option<&Value>,
    requested: Option<&Value>,
    subresource: Option<&str>,
) -> Vec<ManagedFieldsEntry> {
    let recorded = || old.map(recorded_entries).unwrap_or_default();
    match requested {
        _ if subresource.is_some() => recorded(),
        Some(list) if is_reset_request(list) => Vec::new(),
        Some(list) => match decode_managed_fields(list) {
            Ok(entries) if !entries.is_empty() => entries,
            _ => recorded(),
        },
        None => recorded(),
    }
}

/// Takes what a write changed (`changed`, now the writer's) or removed (`removed`, now
/// nobody's) out of every entry in `entries`.
fn disown(entries: &mut [ManagedFieldsEntry], changed: &FieldSet, removed: &FieldSet) {
    for entry in entries {
        entry.fields = entry.fields.difference(changed).difference(removed);
    }
}

/// Fails with the conflicts an unforced apply has with `entries` over `changed`, except those
/// `kubectl` may take over from client-side apply.
fn refuse_conflicts(
    entries: &[ManagedFieldsEntry],
    changed: &FieldSet,
    live: Option<&Value>,
    manager: &str,
    walker: &Walker<'_>,
) -> Result<(), ApplyError> {
    let conflicts = conflicts_with(entries, changed);
    if conflicts.is_empty() {
        return Ok(());
    }
    let unresolved = unresolved_conflicts(live, manager, conflicts, walker);
    if unresolved.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Conflicts(unresolved))
    }
}

/// Each other manager's owned fields among `changed`, managers in identifier order, paths in
/// Kubernetes' order.
fn conflicts_with(entries: &[ManagedFieldsEntry], changed: &FieldSet) -> Vec<Conflict> {
    let mut owners: Vec<&ManagedFieldsEntry> = entries.iter().collect();
    owners.sort_by_key(|e| e.identity().identifier());
    owners
        .into_iter()
        .flat_map(|entry| {
            entry
                .fields
                .intersection(changed)
                .paths()
                .into_iter()
                .map(|path| Conflict {
                    manager: entry.manager.clone(),
                    operation: entry.operation,
                    api_version: entry.api_version.clone(),
                    subresource: entry.subresource.clone(),
                    path,
                })
        })
        .collect()
}

/// The conflicts left after `kubectl`'s upgrade from client-side apply: those on fields its
/// last-applied annotation does not set.
fn unresolved_conflicts(
    live: Option<&Value>,
    manager: &str,
    conflicts: Vec<Conflict>,
    walker: &Walker<'_>,
) -> Vec<Conflict> {
    let allowed = live
        .filter(|_| manager == KUBECTL_APPLY_MANAGER)
        .and_then(|live| last_applied_fields(live, walker));
    match allowed {
        Some(allowed) => conflicts
            .into_iter()
            .filter(|c| !allowed.contains(&c.path.0))
            .collect(),
        None => conflicts,
    }
}

fn validate_config(live: Option<&Value>, config: &Value) -> Result<(), ApplyError> {
    let invalid = |message: String| Err(ApplyError::Invalid(message));
    if !config.is_object() {
        return invalid("the applied configuration must be an object".into());
    }
    let (api_version, kind) = (text_field(config, "apiVersion"), text_field(config, "kind"));
    if api_version.is_empty() {
        return invalid("Object 'apiVersion' is missing in the applied configuration".into());
    }
    if kind.is_empty() {
        return invalid("Object 'Kind' is missing in the applied configuration".into());
    }
    let metadata = config.get("metadata");
    if metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty()
    {
        return invalid("metadata.name is required in an applied configuration".into());
    }
    if metadata
        .and_then(|m| m.get("managedFields"))
        .is_some_and(|v| !v.is_null())
    {
        return invalid("metadata.managedFields must be nil".into());
    }
    let Some(live) = live else {
        return Ok(());
    };
    for (name, applied) in [("apiVersion", api_version), ("kind", kind)] {
        let stored = text_field(live, name);
        if !stored.is_empty() && stored != applied {
            return invalid(format!(
                "the {name} in the applied configuration ({applied}) does not match the \
                 object's ({stored})"
            ));
        }
    }
    Ok(())
}
