"""The simulated world: shop simulator, CDNOW, provider sandbox, the demo."""
