"""Releases on a model's admin page: each alias with its split, a form to edit it, the one-click
"promote the candidate to 100 %" and "roll back to the previous target", and a side-by-side
comparison of the alias's versions.

The registry does not know request figures (it never imports the serving side): the comparison's
rows come from the model admin's ``release_figures`` hook, which the monitoring app fills from
its per-minute rollups (``inference.monitoring.admin``). Every write goes through
``registry.services`` (``alias_set``, ``alias_promote``, ``alias_roll_back``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Q

from ..models import AliasEvent, ModelAlias, ModelVersion, RegisteredModel, slug_validator
from ..selectors import alias_candidates

# Who may edit splits, promote and roll back on the model's page (the same permission the alias
# admin and its form need): staff who may only view see the panel without a form or buttons.
CHANGE_ALIASES = "registry.change_modelalias"


def describe_targets(version: int | None, split: list[dict[str, Any]] | None,
                     shadow: dict[str, Any] | None = None) -> str:
    """'v1 90 % · v2 10 %' for a split, 'v1' for one version, '—' for none (an alias created or
    removed); a shadow after them: 'v1 + shadow v3 20 %'."""
    if split:
        text = " · ".join(f"v{t['version']} {t['weight']} %" for t in split)
    else:
        text = f"v{version}" if version is not None else "—"
    return f"{text} + shadow v{shadow['version']} {shadow['percent']} %" if shadow else text


def describe_alias(alias: ModelAlias) -> str:
    return describe_targets(alias.version.version, alias.split, alias.shadow)


def form_ids(alias: str | None) -> str:
    """Element ids of an alias's form (several forms share one page: field names stay plain)."""
    return f"id_{alias}_%s" if alias else "id_new_%s"


class AliasTargetsForm(forms.Form):
    """Where an alias sends its traffic: a weight per version (0: not in the split) and the primary,
    and optionally a shadow version that gets a copy of a percentage of the requests.

    The primary is the split's first entry (``ModelAlias.version``: what a reader of the alias's one
    version gets); the others are its candidates. One version at 100 % is a plain alias. The weights'
    sum, each version's state and schema, and the shadow's, are judged by ``registry.splits`` when
    the service sets it. The form always says what the shadow is (a set replaces the whole alias:
    leaving it out would clear it).
    """

    name = forms.CharField(label="Alias", max_length=63, validators=[slug_validator])
    primary = forms.TypedChoiceField(coerce=int, widget=forms.RadioSelect, label="Primary")
    shadow_version = forms.TypedChoiceField(coerce=int, empty_value=None, required=False, label="Shadow")
    shadow_percent = forms.IntegerField(label="Shadow's share (%)", min_value=1, max_value=100, required=False,
                                        widget=forms.NumberInput(attrs={"style": "width: 5em"}))

    def __init__(self, *args: Any, model: RegisteredModel, alias: ModelAlias | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model, self.alias = model, alias
        current = dict(alias.targets) if alias is not None else {}
        shadow = alias.shadow_target if alias is not None else None
        # Versions that may take traffic, and those the alias sends traffic to now (shown even when
        # no longer ready, so that a save tells why they must go).
        self.versions = list(ModelVersion.objects.filter(model=model).filter(
            Q(archived=False) | Q(version__in=[*current, *(shadow[:1] if shadow else ())])
        ).order_by("version"))
        self.fields["primary"].choices = [(v.version, f"v{v.version}") for v in self.versions]
        self.fields["shadow_version"].choices = [("", "none")] + [
            (v.version, f"v{v.version}") for v in self.versions]
        if shadow is not None:
            self.fields["shadow_version"].initial, self.fields["shadow_percent"].initial = shadow
        for v in self.versions:
            self.fields[f"weight_{v.version}"] = forms.IntegerField(
                label=f"v{v.version} weight (%)", min_value=0, max_value=100, required=False,
                initial=current.get(v.version, 0),
                widget=forms.NumberInput(attrs={"style": "width: 5em", "class": "weight"}),
            )
        if alias is not None:
            self.fields["name"].initial = alias.name
            self.fields["name"].widget = forms.HiddenInput()
            self.fields["primary"].initial = alias.version.version
        elif self.versions:
            newest = self.versions[-1].version
            self.fields["primary"].initial = newest
            self.fields[f"weight_{newest}"].initial = 100

    def rows(self) -> list[dict[str, Any]]:
        """One row per version: the version, its primary radio button, its weight input."""
        radios = {int(r.data["value"]): r for r in self["primary"]}
        return [{"version": v, "radio": radios[v.version], "weight": self[f"weight_{v.version}"]}
                for v in self.versions]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        if self.alias is None and ModelAlias.objects.filter(model=self.model, name=data["name"]).exists():
            raise ValidationError(f"{self.model.name} already has an alias {data['name']!r}: edit it in its panel.")
        weights = {v.version: data.get(f"weight_{v.version}") or 0 for v in self.versions}
        primary = data["primary"]
        if not weights.get(primary):
            raise ValidationError(
                f"The primary version (v{primary}) needs a weight above 0: it is where the alias points first.")
        by_number = {v.version: v for v in self.versions}
        data["split"] = [(by_number[primary], weights[primary])] + [
            (by_number[n], w) for n, w in weights.items() if n != primary and w > 0]
        data["shadow"] = None
        if data.get("shadow_version") is not None:
            if data.get("shadow_percent") is None:
                raise ValidationError({"shadow_percent": "Say which share of the requests (1 to 100 %) the "
                                                         f"shadow v{data['shadow_version']} gets a copy of."})
            data["shadow"] = (by_number[data["shadow_version"]], data["shadow_percent"])
        return data


@dataclass
class ReleaseFigures:
    """The comparison's source: `rows(version numbers, shadow's number or None)` returns
    ``[{"label": str, "values": {number: text}}]`` (requests, latency, errors, a shadow's agreement, ...); `ranges` (``[{"name", "label", "url", "selected"}]``) the periods
    the page can show, `note` where the figures come from."""

    rows: Callable[[list[int], int | None], list[dict[str, Any]]]
    ranges: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


@dataclass
class AliasPanel:
    """What the page shows of one alias: targets, candidates, previous target, comparison, form."""

    alias: ModelAlias
    targets: list[dict[str, Any]]
    candidates: list[int]
    previous: str | None
    comparison: list[dict[str, Any]] = field(default_factory=list)
    form: AliasTargetsForm | None = None

    @property
    def name(self) -> str:
        return self.alias.name

    @property
    def summary(self) -> str:
        return describe_alias(self.alias)


def alias_panels(*, model: RegisteredModel, may_change: bool, figures: ReleaseFigures | None = None) -> list[AliasPanel]:
    """The panels of `model`'s aliases, with the comparison when there are `figures`, and a form only
    for a user who may change aliases."""
    panels = []
    for alias in ModelAlias.objects.filter(model=model).select_related("version").order_by("name"):
        primary = alias.version.version
        targets = [{"version": n, "share": f"{w} %", "role": "primary" if n == primary else "candidate"}
                   for n, w in alias.targets]
        shadow = alias.shadow_target
        if shadow is not None:
            targets.append({"version": shadow[0], "share": f"copy of {shadow[1]} %", "role": "shadow"})
        last = AliasEvent.objects.filter(model=model, alias=alias.name).order_by("-at", "-id").first()
        previous = (describe_targets(last.from_version, last.from_split, last.from_shadow)
                    if last is not None and last.from_version is not None else None)
        panel = AliasPanel(alias=alias, targets=targets, candidates=alias_candidates(alias), previous=previous)
        if figures is not None:
            numbers = [t["version"] for t in targets]
            panel.comparison = [{"label": row["label"], "cells": [row["values"].get(n, "—") for n in numbers]}
                                for row in figures.rows(numbers, shadow[0] if shadow else None)]
        if may_change:
            panel.form = AliasTargetsForm(model=model, alias=alias, auto_id=form_ids(alias.name))
        panels.append(panel)
    return panels
