"""Pretrained models by Hugging Face id or local path, with one clear error when one cannot be had.

Whether the Hub may be contacted is the environment's call (`HF_HUB_OFFLINE`, read by huggingface_hub
when it is imported); tandem never forces it. A recipe key (e.g. `model.item_encoder`) names the model,
so every failure names that key, the model and the fix.
"""

from __future__ import annotations

from pathlib import Path


def fix_hint(spec: str) -> str:
    """What a user does when a Hub model is neither cached nor reachable."""
    return (
        f"set HF_HUB_OFFLINE=0 on a machine that can reach the Hub, pre-download it with "
        f"`hf download {spec}` (then it loads with HF_HUB_OFFLINE=1 too), or give a local path"
    )


def is_hub_id(spec: str) -> bool:
    """'name' or 'org/name' as the Hub spells repository ids (no network)."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except ValueError:
        return False
    return True


def _causes(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def hub_error(spec: str, key: str, err: BaseException) -> str:
    """The message for a Hub id that failed to load: why (offline, not cached, unreachable, gated,
    no such model) and the fix; errors that are not about getting the files keep their own text."""
    from huggingface_hub import constants, errors

    causes = _causes(err)

    def found(kind) -> bool:
        return any(isinstance(c, kind) for c in causes)

    cache = constants.HF_HUB_CACHE
    login = "log in with `hf auth login` or set HF_TOKEN"
    if found(errors.GatedRepoError):
        return f"{key}: cannot load {spec!r}: it is a gated model; accept its terms on its Hub page, then {login}"
    if found(errors.RepositoryNotFoundError):
        private = f"or it is private: {login}"
        return f"{key}: {spec!r} is not a model on the Hugging Face Hub ({private}); give a Hub id or a local path"
    if found(errors.LocalEntryNotFoundError) or found(errors.OfflineModeIsEnabled):
        why = (
            f"HF_HUB_OFFLINE=1 is set and it is not in the Hugging Face cache ({cache})"
            if constants.HF_HUB_OFFLINE
            else f"it is not in the Hugging Face cache ({cache}) and the Hub cannot be reached"
        )
        return f"{key}: cannot load {spec!r}: {why}; {fix_hint(spec)}"
    if found(errors.HfHubHTTPError) or found(ConnectionError) or found(TimeoutError):
        return f"{key}: cannot load {spec!r}: the Hub could not be reached ({_first_line(err)}); {fix_hint(spec)}"
    return f"{key}: cannot load {spec!r} ({_first_line(err)}); it needs a config and weights from save_pretrained"


def load_pretrained(auto_cls, spec: str | Path, key: str, **kwargs):
    """`auto_cls.from_pretrained(spec, **kwargs)` for a local folder or a Hugging Face id; any failure to
    get the files is one ValueError naming `key` (the recipe key or option that named the model), the
    model and the fix."""
    text = str(spec)
    if Path(text).expanduser().exists():
        try:
            return auto_cls.from_pretrained(str(Path(text).expanduser()), **kwargs)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{key}: cannot load the local folder {text!r} ({_first_line(err)}); it must hold what "
                "save_pretrained writes (config.json, the weights, tokenizer files)"
            ) from err
    if not is_hub_id(text):
        raise ValueError(
            f"{key}: cannot load {text!r}: no such local folder, and not a Hugging Face id (name or org/name); "
            "give an existing folder with config + weights, or a Hub id"
        )
    try:
        return auto_cls.from_pretrained(text, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(hub_error(text, key, err)) from err
