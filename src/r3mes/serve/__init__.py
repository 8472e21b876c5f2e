"""r3mes.serve: multi-LoRA inference with an OpenAI-compatible API and a semantic router.

Public entry points (import them from their modules; this package imports nothing heavy):

* `r3mes.serve.engine.ServingEngine(model, tokenizer, *, model_name, config=EngineConfig())`
  - `start()`, `stop()`, `submit(GenerationRequest, sink) -> RequestHandle`,
  `load_adapter(name, directory)` (hot load / new version, no restart),
  `load_adapter_from(name, loader)`, `unload_adapter(name)`, `stats()`.
* `r3mes.serve.server`: `build_engine(model_dir | None, *, adapters, config, registry)`,
  `run_server(engine, settings, *, host, port, router, registry)` (blocking), `ServerThread`.
* `r3mes.serve.registry_adapters`: `RegistryRef.parse("ID[@VERSION]")`, `home_registry(home)`,
  `load_registry_adapter(engine, name=, registry=, ref=)` - adapters from the registry.
* `r3mes.serve.api.create_app(engine, settings, *, router=None, registry=None)` - the app.
* `r3mes.serve.router`: `load_routes(path)`, `SemanticRouter(routes, embedder)`,
  `minilm_embedder()`; `r3mes.serve.route_eval.evaluate(router, labelled)`.
* `r3mes.serve.chat_template.render_chat(messages)` - the shipped model's chat format.
"""
