"""One pipeline per file, with diffusers' argument names; ``vidcore`` exports the pipeline classes lazily."""
