"""`pareto-router`: pick providers by quality tier (pre_request).

Settings: `tiers` maps a tier name to a list of provider names; the tier is
`tier`, else `default_tier`, else "medium". The whole list is forced, in
order, so when its first provider is down the router falls to the next (the
original forced only the first). Error texts are the original's.
"""

from __future__ import annotations

import json
from typing import Any

from . import Flow, Plugin, PluginState


class ParetoRouter(Plugin):
    id = "pareto-router"
    name = "Pareto Router"

    def pre_request(self, state: PluginState, settings: dict[str, Any]) -> Flow:
        tier = settings.get("tier")
        if not isinstance(tier, str):
            tier = settings.get("default_tier")
        if not isinstance(tier, str):
            tier = "medium"
        tiers = settings.get("tiers")
        if not isinstance(tiers, dict):
            raise ValueError("pareto-router: no `tiers` configured (e.g. [plugins.pareto-router.tiers])")
        providers = tiers.get(tier)
        if not isinstance(providers, list):
            names = ", ".join(json.dumps(n, ensure_ascii=False) for n in sorted(tiers))
            raise ValueError(f"pareto-router: unknown tier '{tier}' (configured tiers: [{names}])")
        if not providers or not isinstance(providers[0], str):
            raise ValueError(f"pareto-router: tier '{tier}' has no providers configured")
        names = [p for p in providers if isinstance(p, str)]
        state.request.forced_providers = names
        state.request.forced_provider = names[0]
        return Flow.MODIFIED
