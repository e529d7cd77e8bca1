//! Bindings generated from `wit/` by wit-bindgen. Plugin authors use the
//! re-exports at the crate root instead; this module is public only so the
//! `export_*!` macros can reach it.

/// The enricher world; it also owns the shared `types` and `host` interfaces.
pub mod enricher {
    wit_bindgen::generate!({
        world: "enricher",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_enricher_bindings",
        default_bindings_module: "nexuspipe_sdk::wit::enricher",
        generate_all,
        additional_derives: [PartialEq],
    });
}

/// The aggregator world, sharing the enricher's `types` and `host`.
pub mod aggregator {
    wit_bindgen::generate!({
        world: "aggregator",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_aggregator_bindings",
        default_bindings_module: "nexuspipe_sdk::wit::aggregator",
        with: {
            "nexuspipe:plugin/types@0.4.0": crate::wit::enricher::nexuspipe::plugin::types,
            "nexuspipe:plugin/host@0.4.0": crate::wit::enricher::nexuspipe::plugin::host,
        },
    });
}

/// The alerter world, sharing the enricher's `types` and `host`.
pub mod alerter {
    wit_bindgen::generate!({
        world: "alerter",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_alerter_bindings",
        default_bindings_module: "nexuspipe_sdk::wit::alerter",
        with: {
            "nexuspipe:plugin/types@0.4.0": crate::wit::enricher::nexuspipe::plugin::types,
            "nexuspipe:plugin/host@0.4.0": crate::wit::enricher::nexuspipe::plugin::host,
        },
    });
}
