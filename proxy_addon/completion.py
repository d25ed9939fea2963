"""`authproxy completion SHELL`: a completion script for bash, zsh or fish, made from the
command's own argument parser (so it never lists a command or option that does not exist)."""

from __future__ import annotations

import argparse
import shlex

__all__ = ["SHELLS", "script"]

SHELLS = ("bash", "zsh", "fish")


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _options(parser: argparse.ArgumentParser) -> list[tuple[str, str, bool]]:
    """(option, help, takes a value) of each long option."""
    out = []
    for action in parser._actions:
        for opt in action.option_strings:
            if opt.startswith("--"):
                out.append((opt, (action.help or "").replace("%%", "%"), action.nargs != 0))
    return out


def _valued(parser: argparse.ArgumentParser) -> list[str]:
    names = {o for o, _, v in _options(parser) if v}
    for sub in _commands(parser).values():
        names |= {o for o, _, v in _options(sub) if v}
    return sorted(names)


def script(parser: argparse.ArgumentParser, shell: str, prog: str = "authproxy") -> str:
    if shell == "bash":
        return _bash(parser, prog)
    if shell == "zsh":
        return _zsh(parser, prog)
    if shell == "fish":
        return _fish(parser, prog)
    raise ValueError(f"unknown shell {shell!r}")


def _bash(parser: argparse.ArgumentParser, prog: str) -> str:
    commands = _commands(parser)
    top = " ".join(o for o, _, _ in _options(parser))
    cases = "\n".join(
        f"        {name}) opts={shlex.quote(' '.join(o for o, _, _ in _options(sub)))} ;;"
        for name, sub in commands.items()
    )
    func = "_" + prog.replace("-", "_")
    return f"""# {prog} completion for bash: eval "$({prog} completion bash)"
{func}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} cmd="" i opts
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in
            {"|".join(_valued(parser))}) ((i++)) ;;
            -*) ;;
            *) cmd=${{COMP_WORDS[i]}}; break ;;
        esac
    done
    case $prev in
        {"|".join(_valued(parser))}) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    case $cmd in
{cases}
        *) opts={shlex.quote(top)} ;;
    esac
    if [[ $cur == -* || -n $cmd ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -W {shlex.quote(" ".join(commands))} -- "$cur"))
    fi
}}
complete -F {func} {prog}
"""


def _zsh(parser: argparse.ArgumentParser, prog: str) -> str:
    commands = _commands(parser)
    helps = _helps(parser)
    described = " ".join(
        shlex.quote(f"{name}:{helps.get(name, '')}".replace("\n", " ")) for name in commands
    )
    cases = "\n".join(
        f"        {name}) opts=({' '.join(o for o, _, _ in _options(sub))}) ;;"
        for name, sub in commands.items()
    )
    func = "_" + prog.replace("-", "_")
    return f"""#compdef {prog}
# {prog} completion for zsh: eval "$({prog} completion zsh)" (or save it as {func} in $fpath)
{func}() {{
    local cmd i
    local -a opts commands
    for (( i = 2; i < CURRENT; i++ )); do
        case ${{words[i]}} in
            {"|".join(_valued(parser))}) (( i++ )) ;;
            -*) ;;
            *) cmd=${{words[i]}}; break ;;
        esac
    done
    case ${{words[CURRENT-1]}} in
        {"|".join(_valued(parser))}) _files; return ;;
    esac
    case $cmd in
{cases}
        *) opts=({" ".join(o for o, _, _ in _options(parser))}) ;;
    esac
    if [[ ${{words[CURRENT]}} == -* || -n $cmd ]]; then
        compadd -- $opts
    else
        commands=({described})
        _describe command commands
    fi
}}
if [[ $funcstack[1] == {func} ]]; then {func} "$@"; else compdef {func} {prog}; fi
"""


def _fish(parser: argparse.ArgumentParser, prog: str) -> str:
    helps = _helps(parser)
    lines = [
        f"# {prog} completion for fish: {prog} completion fish | source",
        f"complete -c {prog} -f",
    ]
    for opt, text, valued in _options(parser):
        lines.append(
            f"complete -c {prog} -l {opt[2:]}"
            + (" -r -F" if valued else "")
            + f" -d {_fish_quote(text)}"
        )
    for name, sub in _commands(parser).items():
        lines.append(
            f"complete -c {prog} -n __fish_use_subcommand -a {name} -d "
            f"{_fish_quote(helps.get(name, ''))}"
        )
        for opt, text, valued in _options(sub):
            if opt in ("--help", "--config"):
                continue
            lines.append(
                f"complete -c {prog} -n '__fish_seen_subcommand_from {name}' -l {opt[2:]}"
                + (" -r -F" if valued else "")
                + f" -d {_fish_quote(text)}"
            )
    return "\n".join(lines) + "\n"


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
