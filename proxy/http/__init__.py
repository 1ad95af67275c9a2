"""The HTTP surface: the only package that imports aiohttp.web."""
