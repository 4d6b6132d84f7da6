"""The chosen model's own choices, as the server advertises them: its schedulers and options.

Mixed into the Controller (which holds `settings`, `capabilities` and `update_settings`).
"""

from __future__ import annotations

import json

from shared import protocol

from .settings import parse_model_options


class ModelChoicesMixin:
    def model_name(self) -> str:
        """The model the next job runs on: the one picked, else the server's current one."""
        caps = self.capabilities
        if self.settings.model and (caps is None or self.settings.model in caps.models):
            return self.settings.model
        return caps.current_model if caps is not None else ""

    def model_info(self) -> protocol.ModelInfo | None:
        """What the server said about the model the next job runs on (None: nothing yet)."""
        return self.capabilities.info_for(self.model_name()) if self.capabilities is not None else None

    def scheduler_names(self) -> list[str]:
        """The schedulers that model runs with (flow-matching models have their own)."""
        info = self.model_info()
        if info is not None:
            return list(info.schedulers)
        return list(self.capabilities.schedulers) if self.capabilities is not None else []

    def option_specs(self) -> list[protocol.OptionSpec]:
        """The options that model takes (e.g. SDXL's refiner split, IF's stage II switch)."""
        info = self.model_info()
        return list(info.options) if info is not None else []

    def _stored_options(self) -> dict:
        return parse_model_options(self.settings.model_options) or {}

    def option_value(self, spec: protocol.OptionSpec):
        """The painter's value for an option, or its default (None: the server decides)."""
        stored = self._stored_options().get(spec.name)
        if stored is not None:
            try:
                return spec.check(stored, "options")
            except protocol.ProtocolError:
                pass  # stale (e.g. another model's range): the default
        return spec.default

    def set_option(self, name: str, value) -> None:
        """Choose an option's value; None goes back to the default."""
        values = self._stored_options()
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
        self.update_settings(model_options=json.dumps(values, sort_keys=True) if values else "")

    def chosen_options(self) -> dict:
        """What a job sends as `options`: the painter's values for the options this model takes."""
        stored, chosen = self._stored_options(), {}
        for spec in self.option_specs():
            if stored.get(spec.name) is None:
                continue  # never chosen: the server's default
            try:
                chosen[spec.name] = spec.check(stored[spec.name], "options")
            except protocol.ProtocolError:
                pass  # stale (another model's range): the default
        return chosen

