//! The pass-through component: how a recording reaches the real host with dynamic values.
//!
//! wasmtime cannot call a linker's typed host function with [`Val`](wasmtime::component::Val)s,
//! and a component may not re-export an imported function. So for a component to record, we
//! generate a second component that imports exactly what it imports and exports, for each
//! imported function, a lifted function of the same type (`f0`, `f1`, …) whose core body only
//! calls the lowered import: the canonical ABI's flat arguments pass straight through (a pointer
//! to spilled arguments points into the same memory, with the same layout), results come back in
//! one return area. Strings and lists the host lowers into it, or the import returns, live in a
//! bump allocator that each call's post-return resets. Instantiated from the ordinary granted
//! linker, in the component's own store, it gives the interposer the real host with real
//! resources.

use std::collections::HashMap;

use anyhow::{bail, Context as _};
use wasm_encoder::{
    CodeSection, ConstExpr, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    GlobalSection, GlobalType, ImportSection, Instruction, MemorySection, MemoryType, Module,
    TypeSection, ValType,
};
use wit_component::{ComponentEncoder, DecodedWasm, StringEncoding};
use wit_parser::abi::FlatTypes;
use wit_parser::abi::{AbiVariant, WasmSignature, WasmType};
use wit_parser::{
    FunctionKind, Handle, InterfaceId, Resolve, SizeAlign, Type, TypeDefKind, TypeId, TypeOwner,
    WorldItem, WorldKey,
};

/// A generated pass-through component and where each imported function went.
pub struct Passthrough {
    /// The component's bytes.
    pub wasm: Vec<u8>,
    /// `(import name, function name)` → the exported interface and function that call it.
    pub exports: HashMap<(String, String), (String, String)>,
}

/// Where the return area starts; the bump allocator's heap follows it.
const RETURN_AREA: u32 = 16;

/// Generates the pass-through component for the imports of `component` (its bytes).
pub fn generate(component: &[u8]) -> anyhow::Result<Passthrough> {
    let (mut resolve, world_id) =
        match wit_component::decode(component).context("reading the component's imports")? {
            DecodedWasm::Component(resolve, world) => (resolve, world),
            DecodedWasm::WitPackage(..) => bail!("this is a WIT package, not a component"),
        };
    let mut world = resolve.worlds[world_id].clone();
    world.name = "capbridge-passthrough".to_string();
    world.exports.clear();

    // The imported functions, in order, with the names they are imported and exported by.
    struct Forward {
        module: String,
        name: String,
        import: WasmSignature,
        export: WasmSignature,
        export_name: String,
        /// Borrowed handles among the parameters: the callee must drop them before returning.
        borrows: Vec<Borrowed>,
    }
    let mut forwards = Vec::new();
    let mut drops = Drops::default();
    let mut exports = HashMap::new();
    let mut return_area = 0usize;
    let mut sizes = SizeAlign::default();
    sizes.fill(&resolve);
    let imports: Vec<(WorldKey, WorldItem)> = resolve.worlds[world_id]
        .imports
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, item) in &imports {
        let WorldItem::Interface { id: source, .. } = item else {
            match item {
                WorldItem::Type { .. } => continue,
                _ => bail!(
                    "`{}` is a root-level import; recording supports imported interfaces",
                    resolve.name_world_key(key)
                ),
            }
        };
        let module = resolve.name_world_key(key);
        let proxy_name = format!("proxy-{}", forwards.len());
        // The proxy interface: `use`s of the source's types, and one function per import.
        let mut proxy = resolve.interfaces[*source].clone();
        proxy.name = None;
        proxy.types.clear();
        proxy.functions.clear();
        proxy.clone_of = None;
        let proxy_id = resolve.interfaces.alloc(proxy);
        let mut memo = HashMap::new();
        let functions: Vec<wit_parser::Function> = resolve.interfaces[*source]
            .functions
            .values()
            .cloned()
            .collect();
        for func in functions {
            if matches!(
                func.kind,
                FunctionKind::AsyncFreestanding
                    | FunctionKind::AsyncMethod(_)
                    | FunctionKind::AsyncStatic(_)
            ) {
                bail!(
                    "`{module}` `{}` is an async import, which recording does not support yet",
                    func.name
                );
            }
            let export_name = format!("f{}", forwards.len());
            let mut proxied = func.clone();
            proxied.name = export_name.clone();
            proxied.kind = FunctionKind::Freestanding;
            for param in &mut proxied.params {
                param.ty = use_in(&mut resolve, proxy_id, *source, param.ty, &mut memo)?;
            }
            if let Some(ty) = proxied.result {
                return_area = return_area.max(sizes.size(&ty).size_wasm32());
                proxied.result = Some(use_in(&mut resolve, proxy_id, *source, ty, &mut memo)?);
            }
            let import = resolve.wasm_signature(AbiVariant::GuestImport, &func);
            let borrows = borrowed_params(&resolve, &func, &import, &mut drops)
                .with_context(|| format!("`{module}` `{}`", func.name))?;
            forwards.push(Forward {
                module: module.clone(),
                name: func.name.clone(),
                borrows,
                import,
                export: resolve.wasm_signature(AbiVariant::GuestExport, &proxied),
                export_name: format!("{proxy_name}#{export_name}"),
            });
            exports.insert(
                (module.clone(), func.name.clone()),
                (proxy_name.clone(), export_name.clone()),
            );
            resolve.interfaces[proxy_id]
                .functions
                .insert(export_name, proxied);
        }
        world.exports.insert(
            WorldKey::Name(proxy_name),
            WorldItem::Interface {
                id: proxy_id,
                stability: Default::default(),
                span: Default::default(),
                docs: Default::default(),
                external_id: None,
            },
        );
    }
    let package = world.package;
    let passthrough_world = resolve.worlds.alloc(world);
    if let Some(package) = package {
        resolve.packages[package]
            .worlds
            .insert("capbridge-passthrough".to_string(), passthrough_world);
        for (_, item) in &resolve.worlds[passthrough_world].exports {
            if let WorldItem::Interface { id, .. } = item {
                resolve.interfaces[*id].package = Some(package);
            }
        }
    }

    // The core module.
    let heap_base = (RETURN_AREA + u32::try_from(return_area)? + 15) & !15;
    let mut types = TypeSection::new();
    let mut import_section = ImportSection::new();
    let mut functions = FunctionSection::new();
    let mut code = CodeSection::new();
    let mut export_section = ExportSection::new();
    let mut type_count = 0u32;
    let mut add_type = |types: &mut TypeSection, params: Vec<ValType>, results: Vec<ValType>| {
        types.ty().function(params, results);
        type_count += 1;
        type_count - 1
    };
    for forward in &forwards {
        let ty = add_type(
            &mut types,
            flat(&forward.import.params),
            flat(&forward.import.results),
        );
        import_section.import(&forward.module, &forward.name, EntityType::Function(ty));
    }
    let drop_ty = add_type(&mut types, vec![ValType::I32], Vec::new());
    for (module, name) in &drops.0 {
        import_section.import(module, name, EntityType::Function(drop_ty));
    }
    let imported = u32::try_from(forwards.len() + drops.0.len())?;
    let first_drop = u32::try_from(forwards.len())?;
    let mut next_function = imported;
    for (index, forward) in forwards.iter().enumerate() {
        let params = flat(&forward.export.params);
        let results = flat(&forward.export.results);
        let ty = add_type(&mut types, params.clone(), results.clone());
        functions.function(ty);
        let locals = u32::try_from(params.len())?;
        let (result_local, counter) = (locals, locals + 1);
        let stashed = (!forward.import.retptr)
            .then(|| flat(&forward.import.results).first().copied())
            .flatten();
        let mut body = Function::new([(1, stashed.unwrap_or(ValType::I32)), (1, ValType::I32)]);
        for p in 0..params.len() {
            body.instruction(&Instruction::LocalGet(u32::try_from(p)?));
        }
        if forward.import.retptr {
            body.instruction(&Instruction::I32Const(RETURN_AREA as i32));
        }
        body.instruction(&Instruction::Call(u32::try_from(index)?));
        if stashed.is_some() {
            body.instruction(&Instruction::LocalSet(result_local));
        }
        for borrowed in &forward.borrows {
            drop_borrowed(&mut body, borrowed, first_drop, counter);
        }
        if stashed.is_some() {
            body.instruction(&Instruction::LocalGet(result_local));
        }
        if forward.import.retptr {
            body.instruction(&Instruction::I32Const(RETURN_AREA as i32));
        }
        body.instruction(&Instruction::End);
        code.function(&body);
        export_section.export(&forward.export_name, ExportKind::Func, next_function);
        next_function += 1;

        // Post-return: everything the call allocated has been read.
        let post = add_type(&mut types, results, Vec::new());
        functions.function(post);
        let mut body = Function::new([]);
        body.instruction(&Instruction::I32Const(heap_base as i32))
            .instruction(&Instruction::GlobalSet(0))
            .instruction(&Instruction::End);
        code.function(&body);
        export_section.export(
            &format!("cabi_post_{}", forward.export_name),
            ExportKind::Func,
            next_function,
        );
        next_function += 1;
    }
    // cabi_realloc(old_ptr, old_len, align, new_len) -> ptr: a bump allocator.
    let realloc_ty = add_type(&mut types, vec![ValType::I32; 4], vec![ValType::I32]);
    functions.function(realloc_ty);
    code.function(&realloc_body());
    export_section.export("cabi_realloc", ExportKind::Func, next_function);
    export_section.export("memory", ExportKind::Memory, 0);

    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut globals = GlobalSection::new();
    globals.global(
        GlobalType {
            val_type: ValType::I32,
            mutable: true,
            shared: false,
        },
        &ConstExpr::i32_const(heap_base as i32),
    );
    let mut module = Module::new();
    module
        .section(&types)
        .section(&import_section)
        .section(&functions)
        .section(&memories)
        .section(&globals)
        .section(&export_section)
        .section(&code);
    let mut module = module.finish();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        passthrough_world,
        StringEncoding::UTF8,
    )?;
    let wasm = ComponentEncoder::default()
        .validate(true)
        .module(&module)?
        .encode()
        .context("encoding the pass-through component")?;
    Ok(Passthrough { wasm, exports })
}

fn flat(types: &[WasmType]) -> Vec<ValType> {
    types
        .iter()
        .map(|t| match t {
            WasmType::I32 | WasmType::Pointer | WasmType::Length => ValType::I32,
            WasmType::I64 | WasmType::PointerOrI64 => ValType::I64,
            WasmType::F32 => ValType::F32,
            WasmType::F64 => ValType::F64,
        })
        .collect()
}

/// `ptr = align_up(bump, align); bump = ptr + new_len;` growing memory as needed, copying
/// `old_len` bytes from `old_ptr` when reallocating.
fn realloc_body() -> Function {
    use Instruction as I;
    const OLD_PTR: u32 = 0;
    const OLD_LEN: u32 = 1;
    const ALIGN: u32 = 2;
    const NEW_LEN: u32 = 3;
    const PTR: u32 = 4;
    let mut f = Function::new([(1, ValType::I32)]);
    f.instruction(&I::GlobalGet(0))
        .instruction(&I::LocalGet(ALIGN))
        .instruction(&I::I32Const(1))
        .instruction(&I::I32Sub)
        .instruction(&I::I32Add)
        .instruction(&I::LocalGet(ALIGN))
        .instruction(&I::I32Const(1))
        .instruction(&I::I32Sub)
        .instruction(&I::I32Const(-1))
        .instruction(&I::I32Xor)
        .instruction(&I::I32And)
        .instruction(&I::LocalTee(PTR))
        .instruction(&I::LocalGet(NEW_LEN))
        .instruction(&I::I32Add)
        .instruction(&I::GlobalSet(0))
        // while bump > memory.size * 64 KiB: memory.grow(1) (trap when refused)
        .instruction(&I::Block(wasm_encoder::BlockType::Empty))
        .instruction(&I::Loop(wasm_encoder::BlockType::Empty))
        .instruction(&I::GlobalGet(0))
        .instruction(&I::MemorySize(0))
        .instruction(&I::I32Const(16))
        .instruction(&I::I32Shl)
        .instruction(&I::I32LeU)
        .instruction(&I::BrIf(1))
        .instruction(&I::I32Const(1))
        .instruction(&I::MemoryGrow(0))
        .instruction(&I::I32Const(-1))
        .instruction(&I::I32Eq)
        .instruction(&I::If(wasm_encoder::BlockType::Empty))
        .instruction(&I::Unreachable)
        .instruction(&I::End)
        .instruction(&I::Br(0))
        .instruction(&I::End)
        .instruction(&I::End)
        .instruction(&I::LocalGet(OLD_LEN))
        .instruction(&I::If(wasm_encoder::BlockType::Empty))
        .instruction(&I::LocalGet(PTR))
        .instruction(&I::LocalGet(OLD_PTR))
        .instruction(&I::LocalGet(OLD_LEN))
        .instruction(&I::MemoryCopy {
            src_mem: 0,
            dst_mem: 0,
        })
        .instruction(&I::End)
        .instruction(&I::LocalGet(PTR))
        .instruction(&I::End);
    f
}

/// `ty` as the proxy interface sees it: each named type of `source` becomes a `use` of it in
/// `proxy` (the form wit-component encodes), anonymous types are rebuilt around those.
fn use_in(
    resolve: &mut Resolve,
    proxy: InterfaceId,
    source: InterfaceId,
    ty: Type,
    memo: &mut HashMap<TypeId, TypeId>,
) -> anyhow::Result<Type> {
    let Type::Id(id) = ty else {
        return Ok(ty);
    };
    if let Some(done) = memo.get(&id) {
        return Ok(Type::Id(*done));
    }
    let def = resolve.types[id].clone();
    let mut new = def.clone();
    new.docs = Default::default();
    if let Some(name) = &def.name {
        if def.owner != TypeOwner::Interface(source) {
            bail!("type `{name}` is not named by the interface that uses it");
        }
        new.kind = TypeDefKind::Type(Type::Id(id));
        new.owner = TypeOwner::Interface(proxy);
        let alias = resolve.types.alloc(new);
        resolve.interfaces[proxy].types.insert(name.clone(), alias);
        memo.insert(id, alias);
        return Ok(Type::Id(alias));
    }
    let mut inner = |t: Type| use_in(resolve, proxy, source, t, memo);
    new.kind = match def.kind {
        TypeDefKind::List(t) => TypeDefKind::List(inner(t)?),
        TypeDefKind::Option(t) => TypeDefKind::Option(inner(t)?),
        TypeDefKind::FixedLengthList(t, n) => TypeDefKind::FixedLengthList(inner(t)?, n),
        TypeDefKind::Type(t) => TypeDefKind::Type(inner(t)?),
        TypeDefKind::Result(mut r) => {
            r.ok = r.ok.map(&mut inner).transpose()?;
            r.err = r.err.map(&mut inner).transpose()?;
            TypeDefKind::Result(r)
        }
        TypeDefKind::Tuple(mut t) => {
            t.types = t
                .types
                .into_iter()
                .map(&mut inner)
                .collect::<anyhow::Result<_>>()?;
            TypeDefKind::Tuple(t)
        }
        TypeDefKind::Handle(Handle::Own(r)) => match inner(Type::Id(r))? {
            Type::Id(r) => TypeDefKind::Handle(Handle::Own(r)),
            _ => bail!("a handle to a non-resource"),
        },
        TypeDefKind::Handle(Handle::Borrow(r)) => match inner(Type::Id(r))? {
            Type::Id(r) => TypeDefKind::Handle(Handle::Borrow(r)),
            _ => bail!("a handle to a non-resource"),
        },
        other => bail!("an anonymous {} cannot be recorded", other.as_str()),
    };
    let rebuilt = resolve.types.alloc(new);
    memo.insert(id, rebuilt);
    Ok(Type::Id(rebuilt))
}

/// A borrowed handle among a function's parameters, at a flat parameter index.
enum Borrowed {
    /// `borrow<R>`: the handle is the parameter.
    One { at: u32, drop: u32 },
    /// `list<borrow<R>>`: pointer and length at `at` and `at + 1`.
    List { at: u32, drop: u32 },
}

/// The `[resource-drop]` imports needed, in import order.
#[derive(Default)]
struct Drops(Vec<(String, String)>);

impl Drops {
    /// The index among the drop imports of the drop of resource `id`.
    fn of(&mut self, resolve: &Resolve, mut id: TypeId) -> anyhow::Result<u32> {
        while let TypeDefKind::Type(Type::Id(next)) = resolve.types[id].kind {
            id = next;
        }
        let def = &resolve.types[id];
        let (TypeOwner::Interface(owner), Some(name)) = (def.owner, &def.name) else {
            bail!("a borrowed resource not defined by an interface");
        };
        let key = (
            resolve.name_world_key(&WorldKey::Interface(owner)),
            format!("[resource-drop]{name}"),
        );
        let at = match self.0.iter().position(|k| *k == key) {
            Some(at) => at,
            None => {
                self.0.push(key);
                self.0.len() - 1
            }
        };
        Ok(u32::try_from(at)?)
    }
}

/// The borrowed handles among `func`'s parameters; refuses shapes the shim cannot release
/// (a borrow inside a record, option or variant, or among spilled parameters).
fn borrowed_params(
    resolve: &Resolve,
    func: &wit_parser::Function,
    sig: &WasmSignature,
    drops: &mut Drops,
) -> anyhow::Result<Vec<Borrowed>> {
    let mut out = Vec::new();
    let mut at = 0u32;
    for param in &func.params {
        let handle = |ty: Type| match ty {
            Type::Id(id) => match resolve.types[id].kind {
                TypeDefKind::Handle(Handle::Borrow(r)) => Some(r),
                _ => None,
            },
            _ => None,
        };
        let shape = match param.ty {
            ty if handle(ty).is_some() => Some((false, handle(ty))),
            Type::Id(id) => match resolve.types[id].kind {
                TypeDefKind::List(item) if handle(item).is_some() => Some((true, handle(item))),
                _ => None,
            },
            _ => None,
        };
        match shape {
            Some((list, Some(resource))) => {
                if sig.indirect_params {
                    bail!("borrowed handles among spilled parameters cannot be recorded");
                }
                let drop = drops.of(resolve, resource)?;
                out.push(if list {
                    Borrowed::List { at, drop }
                } else {
                    Borrowed::One { at, drop }
                });
            }
            _ if has_borrow(resolve, param.ty) => {
                bail!(
                    "parameter `{}` holds a borrowed handle in a shape recording does not support",
                    param.name
                )
            }
            _ => {}
        }
        let mut storage = [WasmType::I32; 64];
        let mut flat = FlatTypes::new(&mut storage);
        resolve.push_flat(&param.ty, &mut flat);
        at += u32::try_from(flat.to_vec().len())?;
    }
    Ok(out)
}

fn has_borrow(resolve: &Resolve, ty: Type) -> bool {
    let Type::Id(id) = ty else {
        return false;
    };
    match &resolve.types[id].kind {
        TypeDefKind::Handle(Handle::Borrow(_)) => true,
        TypeDefKind::Handle(Handle::Own(_)) | TypeDefKind::Resource => false,
        TypeDefKind::Record(r) => r.fields.iter().any(|f| has_borrow(resolve, f.ty)),
        TypeDefKind::Tuple(t) => t.types.iter().any(|t| has_borrow(resolve, *t)),
        TypeDefKind::Variant(v) => v
            .cases
            .iter()
            .any(|c| c.ty.is_some_and(|t| has_borrow(resolve, t))),
        TypeDefKind::Option(t) | TypeDefKind::List(t) | TypeDefKind::Type(t) => {
            has_borrow(resolve, *t)
        }
        TypeDefKind::FixedLengthList(t, _) => has_borrow(resolve, *t),
        TypeDefKind::Result(r) => {
            r.ok.is_some_and(|t| has_borrow(resolve, t))
                || r.err.is_some_and(|t| has_borrow(resolve, t))
        }
        _ => false,
    }
}

/// Drops the borrowed handles lent to this call (`counter` is a spare i32 local).
fn drop_borrowed(body: &mut Function, borrowed: &Borrowed, first_drop: u32, counter: u32) {
    use wasm_encoder::BlockType;
    use Instruction as I;
    match *borrowed {
        Borrowed::One { at, drop } => {
            body.instruction(&I::LocalGet(at))
                .instruction(&I::Call(first_drop + drop));
        }
        Borrowed::List { at, drop } => {
            body.instruction(&I::I32Const(0))
                .instruction(&I::LocalSet(counter))
                .instruction(&I::Block(BlockType::Empty))
                .instruction(&I::Loop(BlockType::Empty))
                .instruction(&I::LocalGet(counter))
                .instruction(&I::LocalGet(at + 1))
                .instruction(&I::I32GeU)
                .instruction(&I::BrIf(1))
                .instruction(&I::LocalGet(at))
                .instruction(&I::LocalGet(counter))
                .instruction(&I::I32Const(4))
                .instruction(&I::I32Mul)
                .instruction(&I::I32Add)
                .instruction(&I::I32Load(wasm_encoder::MemArg {
                    offset: 0,
                    align: 2,
                    memory_index: 0,
                }))
                .instruction(&I::Call(first_drop + drop))
                .instruction(&I::LocalGet(counter))
                .instruction(&I::I32Const(1))
                .instruction(&I::I32Add)
                .instruction(&I::LocalSet(counter))
                .instruction(&I::Br(0))
                .instruction(&I::End)
                .instruction(&I::End);
        }
    }
}
