"""The only package that imports SGLang (tested against SGLang 0.5.17).

``plugin.register`` is the ``sglang.srt.plugins`` entry point; ``hooks`` holds the small named hooks it installs;
``backend`` is the ``qwen1m`` attention backend that SGLang's model runner builds in the scheduler process.
"""
