//! The `#[rdask::task]` attribute. Use it through the `rdask` crate: `#[rdask::task]`.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, Error, FnArg, GenericArgument, ItemFn, LitStr, Path, PathArguments, ReturnType,
    Token, Type,
};

/// Options of the attribute: `name = "…"`, `prefix = "…"`, `crate = path`.
#[derive(Default)]
struct Options {
    name: Option<LitStr>,
    prefix: Option<LitStr>,
    krate: Option<Path>,
}

impl Parse for Options {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut opts = Options::default();
        let items = Punctuated::<syn::MetaNameValue, Token![,]>::parse_terminated(input)?;
        for item in items {
            let key = item
                .path
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            let lit = match &item.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => s.clone(),
                other => {
                    return Err(Error::new(
                        other.span(),
                        "expected a string literal, e.g. name = \"inc\"",
                    ));
                }
            };
            match key.as_str() {
                "name" => opts.name = Some(lit),
                "prefix" => opts.prefix = Some(lit),
                "crate" => opts.krate = Some(lit.parse()?),
                _ => {
                    return Err(Error::new(
                        item.path.span(),
                        "unknown option: expected `name`, `prefix` or `crate`",
                    ));
                }
            }
        }
        Ok(opts)
    }
}

/// Registers a plain Rust function as an rdask task function.
///
/// See the documentation of `rdask::task` for the full description.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let opts = syn::parse_macro_input!(attr as Options);
    let func = syn::parse_macro_input!(item as ItemFn);
    expand(opts, func)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

fn expand(opts: Options, func: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    if let Some(a) = &sig.asyncness {
        return Err(Error::new(
            a.span(),
            "a task function cannot be async: it runs on a thread of the node's task pool",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(Error::new(
            sig.generics.span(),
            "a task function cannot be generic: it is registered under one name with one signature",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(Error::new(v.span(), "a task function cannot be variadic"));
    }
    if let Some(u) = &sig.unsafety {
        return Err(Error::new(u.span(), "a task function cannot be unsafe"));
    }
    let mut tys: Vec<Type> = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(Error::new(
                    r.span(),
                    "a task function must be a free function, not a method",
                ));
            }
            FnArg::Typed(pt) => {
                if let Type::Reference(r) = &*pt.ty {
                    return Err(Error::new(
                        r.span(),
                        "task arguments must be owned values (they are decoded on the node): \
                         take `String` instead of `&str`, `Vec<T>` instead of `&[T]`",
                    ));
                }
                tys.push((*pt.ty).clone());
            }
        }
    }

    let krate: Path = opts
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::rdask));
    let ident = &sig.ident;
    let ident_str = ident.to_string();
    let name = match &opts.name {
        Some(n) => quote!(#n),
        None => quote!(::core::concat!(::core::module_path!(), "::", #ident_str)),
    };
    let prefix = match &opts.prefix {
        Some(p) => p.value(),
        None => ident_str.trim_start_matches("r#").replace('_', "-"),
    };
    let (ret, out, fallible) = match &sig.output {
        ReturnType::Default => (quote!(()), quote!(()), false),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (quote!(#ty), quote!(#ok), true),
            None => (quote!(#ty), quote!(#ty), false),
        },
    };

    let (outer_attrs, inner_attrs): (Vec<&Attribute>, Vec<&Attribute>) =
        func.attrs.iter().partition(|a| {
            let p = a.path();
            p.is_ident("doc") || p.is_ident("cfg") || p.is_ident("cfg_attr")
        });
    let vis = &func.vis;
    let inputs = &sig.inputs;
    let block = &func.block;
    let arity = tys.len();
    let arg_idents: Vec<_> = (0..arity)
        .map(|i| format_ident!("__rdask_arg{}", i))
        .collect();
    let indices = 0..arity;
    let finish = if fallible {
        quote! {
            match __rdask_out {
                ::core::result::Result::Ok(v) => #krate::__private::encode_output(&v),
                ::core::result::Result::Err(e) => ::core::result::Result::Err(
                    #krate::__private::TaskFailure::Failed(::std::string::ToString::to_string(&e)),
                ),
            }
        }
    } else {
        quote!(#krate::__private::encode_output(&__rdask_out))
    };

    Ok(quote! {
        #(#outer_attrs)*
        #[allow(non_upper_case_globals)]
        #vis const #ident: #krate::__private::TaskFn<fn(#(#tys),*) -> #ret, (#(#tys,)*), #out> = {
            #(#inner_attrs)*
            fn #ident(#inputs) -> #ret #block

            fn __rdask_invoke(
                __rdask_args: &[#krate::__private::Bytes],
            ) -> ::core::result::Result<::std::vec::Vec<u8>, #krate::__private::TaskFailure> {
                #(
                    let #arg_idents: #tys = #krate::__private::decode_arg(__rdask_args, #indices)?;
                )*
                let __rdask_out = #ident(#(#arg_idents),*);
                #finish
            }

            #krate::__private::inventory::submit! {
                #krate::__private::TaskEntry { name: #name, arity: #arity, invoke: __rdask_invoke }
            }

            #krate::__private::TaskFn::new(#name, #prefix, #ident as fn(#(#tys),*) -> #ret)
        };
    })
}

/// `T` if `ty` is written `…Result<T, …>`.
fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(tp) = ty else { return None };
    let last = tp.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}
