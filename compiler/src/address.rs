//! Content addressing: proto-functions to hashed blobs.
//!
//! 1. Keep only functions reachable from the roots (the entry and every user top-level
//!    function), so unused prelude functions never appear in a module.
//! 2. Split the reference graph into strongly connected components (Tarjan, iterative).
//!    Tarjan emits a component only after every component it references, so processing
//!    components in emission order means every external reference is already hashed.
//! 3. Within a component, order members canonically: by the SHA-256 of the member encoded
//!    alone with every intra-component reference blanked to `Local(u32::MAX)`, refined by
//!    the keys of the members it references (see `refine`), ties broken by proto order
//!    (source order). Then rewrite intra-component references (self included)
//!    to `FnRef::Local(member)` and others to `FnRef::External(id)`, encode the component as
//!    one [`Blob`] and hash it.
//!
//! Invariants:
//! - Output depends only on the proto list (never on `HashMap` iteration order): the same
//!   source gives the same hashes on every run and machine.
//! - Debug info is attached per blob outside the hash.
//! - Ties in step 3 occur only between members that colour refinement cannot tell apart
//!   (identical code referencing indistinguishable members, e.g. a symmetric cycle); for
//!   those, reordering the source can in principle change the blob (graph canonisation in
//!   general is not attempted).

use crate::codegen::Protos;
use crate::resolve::Globals;
use skiff_vm::blob::{Blob, BlobDebug, BlobHash, FnRef, FunctionId};
use skiff_vm::Module;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Strongly connected components of the graph `edges` restricted to `nodes`, each sorted
/// ascending, in an order where a component comes after every component it reaches.
pub fn tarjan(edges: &[&[usize]], nodes: &[usize]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let mut index: Vec<Option<u32>> = vec![None; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut next = 0u32;
    let mut out = Vec::new();
    for &root in nodes {
        if index[root].is_some() {
            continue;
        }
        let mut calls: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = Some(next);
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut i)) = calls.last_mut() {
            if let Some(&w) = edges[v].get(*i) {
                *i += 1;
                match index[w] {
                    None => {
                        index[w] = Some(next);
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        calls.push((w, 0));
                    }
                    Some(iw) if on_stack[w] => low[v] = low[v].min(iw),
                    Some(_) => {}
                }
            } else {
                calls.pop();
                if Some(low[v]) == index[v] {
                    let mut comp = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    comp.sort_unstable();
                    out.push(comp);
                }
                if let Some(&(u, _)) = calls.last() {
                    low[u] = low[u].min(low[v]);
                }
            }
        }
    }
    out
}

/// Refines the members' content keys by the keys of the members they reference and are
/// referenced by (colour refinement, as in Weisfeiler–Leman): each round gives each member
/// `SHA-256(key || keys of its intra-component targets in reference order || 0xff ||
/// sorted keys of the members referencing it)`. Rounds stop
/// when the number of distinct keys stops growing. Members with equal final keys are
/// indistinguishable by this test (e.g. the rotations of a symmetric cycle), and only for
/// them does the source-order tie-break apply.
fn refine(comp: &[usize], initial: &[[u8; 32]], targets: &[&[usize]]) -> Vec<[u8; 32]> {
    let count = |c: &[[u8; 32]]| {
        let mut v = c.to_vec();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    // Intra-component edges by position in `comp`: out-edges in reference order, and the
    // referencing members of each member.
    let out: Vec<Vec<usize>> = comp
        .iter()
        .map(|&m| {
            targets[m]
                .iter()
                .filter_map(|t| comp.binary_search(t).ok())
                .collect()
        })
        .collect();
    let mut incoming: Vec<Vec<usize>> = vec![Vec::new(); comp.len()];
    for (i, outs) in out.iter().enumerate() {
        for &j in outs {
            incoming[j].push(i);
        }
    }
    let mut colors = initial.to_vec();
    let mut distinct = count(&colors);
    while distinct < comp.len() {
        let next: Vec<[u8; 32]> = (0..comp.len())
            .map(|i| {
                let mut bytes = colors[i].to_vec();
                for &j in &out[i] {
                    bytes.extend_from_slice(&colors[j]);
                }
                // Who references this member, as a sorted multiset of keys.
                let mut ins: Vec<[u8; 32]> = incoming[i].iter().map(|&j| colors[j]).collect();
                ins.sort_unstable();
                bytes.push(0xff);
                for c in ins {
                    bytes.extend_from_slice(&c);
                }
                BlobHash::of(&bytes).0
            })
            .collect();
        let d = count(&next);
        colors = next;
        if d == distinct {
            break;
        }
        distinct = d;
    }
    colors
}

/// Hashes the reachable proto-functions into blobs and assembles the module.
pub fn build_module(protos: Protos, globals: &Globals) -> Module {
    let Protos { fns, top, entry } = protos;
    // Each reachable function's code and debug entry are moved into its blob once.
    let mut codes = Vec::with_capacity(fns.len());
    let mut debug_entries = Vec::with_capacity(fns.len());
    let mut target_lists = Vec::with_capacity(fns.len());
    for f in fns {
        codes.push(f.code);
        debug_entries.push(f.debug);
        target_lists.push(f.targets);
    }
    let targets: Vec<&[usize]> = target_lists.iter().map(|t| &t[..]).collect();
    let mut roots = vec![entry];
    roots.extend(top.iter().take(globals.n_user_fns).copied());
    let comps = tarjan(&targets, &roots);

    let mut ids: Vec<Option<FunctionId>> = vec![None; targets.len()];
    let mut blobs = BTreeMap::new();
    let mut debug = BTreeMap::new();
    for comp in &comps {
        let in_comp = |t: usize| comp.binary_search(&t).is_ok();
        let refs_with = |m: usize, local: &dyn Fn(usize) -> u32| -> Vec<FnRef> {
            targets[m]
                .iter()
                .map(|&t| {
                    if in_comp(t) {
                        FnRef::Local(local(t))
                    } else {
                        FnRef::External(ids[t].expect("dependencies are addressed first"))
                    }
                })
                .collect()
        };
        // A function alone in its component (most) is its blob's only member: nothing to
        // order, so no keys to compute.
        let order: Vec<usize> = if let [m] = comp[..] {
            vec![m]
        } else {
            let colors: Vec<[u8; 32]> = comp
                .iter()
                .map(|&m| {
                    let mut code = codes[m].clone();
                    code.refs = refs_with(m, &|_| u32::MAX);
                    Blob {
                        functions: vec![code],
                    }
                    .hash()
                    .0
                })
                .collect();
            let colors = refine(comp, &colors, &targets);
            let mut keyed: Vec<([u8; 32], usize)> =
                colors.into_iter().zip(comp.iter().copied()).collect();
            keyed.sort();
            keyed.iter().map(|&(_, m)| m).collect()
        };
        let member_of = |t: usize| order.iter().position(|&m| m == t).unwrap_or(0) as u32;
        let mut functions = Vec::with_capacity(order.len());
        let mut debugs = Vec::with_capacity(order.len());
        for &m in &order {
            let refs = refs_with(m, &member_of);
            let mut code = std::mem::take(&mut codes[m]);
            code.refs = refs;
            functions.push(code);
            debugs.push(std::mem::take(&mut debug_entries[m]));
        }
        let blob = Blob { functions };
        let hash = blob.hash();
        for (i, &m) in order.iter().enumerate() {
            ids[m] = Some(FunctionId {
                blob: hash,
                member: i as u32,
            });
        }
        blobs.insert(hash, Arc::new(blob));
        // Identical functions share a blob; the first one (in source order) names it.
        debug
            .entry(hash)
            .or_insert_with(|| Arc::new(BlobDebug { functions: debugs }));
    }
    let id = |p: usize| ids[p].expect("roots are addressed");
    let exports = globals
        .user_fn_names()
        .map(|(name, i)| (name.to_string(), id(top[i])))
        .collect();
    Module {
        blobs,
        debug,
        exports,
        entry: id(entry),
    }
}
