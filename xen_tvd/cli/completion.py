"""Bash completion for tvdctl, generated from its own argparse parser.

    tvdctl completion bash       print it (eval "$(tvdctl completion bash)" in a shell)

tvdctl install writes the same text to the bash-completion directory. Generated rather than
computed per key press (argcomplete would start Python and import tvdctl, ~0.4 s, on every
Tab): sub-commands, options and option choices come from the parser, so the file cannot drift
from the commands; arguments that are files fall back to bash's file-name completion.
"""
from __future__ import annotations

import argparse
import re

from xen_tvd.cli.common import version

_WORD = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9_.:,+=/-]*$")   # needs no shell quoting

_FUNCTION = r'''
_tvdctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} path=tvdctl i w
    # the sub-command path so far; the value after an option that takes one is not a command
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ " ${_tvdctl_valued[$path]} " == *" $w "* ]]; then
            ((i++))
        elif [[ $w != -* && " ${_tvdctl_commands[$path]} " == *" $w "* ]]; then
            path+=" $w"
        fi
    done
    COMPREPLY=()
    if ((COMP_CWORD > 1)) && [[ " ${_tvdctl_valued[$path]} " == *" $prev "* ]]; then
        # an option's value: its choices, else (no reply) bash completes file names
        [[ -n ${_tvdctl_choices[$path $prev]} ]] &&
            COMPREPLY=($(compgen -W "${_tvdctl_choices[$path $prev]}" -- "$cur"))
    elif [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "${_tvdctl_options[$path]}" -- "$cur"))
    else
        local words="${_tvdctl_commands[$path]} ${_tvdctl_positional[$path]}"
        [[ -n ${words// } ]] && COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
    return 0
}
complete -o default -F _tvdctl tvdctl
'''


def _words(items) -> str:
    items = [str(i) for i in items]
    bad = [i for i in items if not _WORD.match(i)]
    if bad:   # a name bash would split or expand: a programming error in a parser
        raise ValueError(f"cannot complete {bad}: not plain words")
    return " ".join(items)


def walk(parser: argparse.ArgumentParser, path: str = "tvdctl"):
    """(path, commands, positional choices, options, valued options, {option: choices}) per
    (sub-)parser."""
    commands: list[str] = []
    positional: list[str] = []
    options: list[str] = []
    valued: list[str] = []
    choices: dict[str, list[str]] = {}
    children = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                commands.append(name)
                children.append((f"{path} {name}", child))
        elif not action.option_strings:
            positional += [str(c) for c in action.choices or ()]
        else:
            options += action.option_strings
            if action.nargs != 0:
                valued += action.option_strings
                if action.choices:
                    for opt in action.option_strings:
                        choices[opt] = list(action.choices)
    yield path, commands, positional, options, valued, choices
    for child_path, child in children:
        yield from walk(child, child_path)


def bash_script(parser: argparse.ArgumentParser) -> str:
    """The completion script for tvdctl's `parser` (tvdctl.build_parser())."""
    tables = {"commands": [], "positional": [], "options": [], "valued": [], "choices": []}
    for path, commands, positional, options, valued, choices in walk(parser):
        key = f'["{_words(path.split())}"]'
        if commands:
            tables["commands"].append(f'{key}="{_words(commands)}"')
        if positional:
            tables["positional"].append(f'{key}="{_words(positional)}"')
        tables["options"].append(f'{key}="{_words(options)}"')
        if valued:
            tables["valued"].append(f'{key}="{_words(valued)}"')
        for opt, values in choices.items():
            tables["choices"].append(f'["{path} {_words([opt])}"]="{_words(values)}"')
    lines = [f"# bash completion for tvdctl (xen-tvd {version()}), generated from its parser by "
             "'tvdctl completion bash'; tvdctl install writes it"]
    for name, entries in tables.items():
        lines.append(f"declare -gA _tvdctl_{name}=(")
        lines += [f"    {e}" for e in entries]
        lines.append(")")
    return "\n".join(lines) + "\n" + _FUNCTION


def cmd_completion(args) -> int:
    print(bash_script(args.tvdctl_parser), end="")
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("completion", help="print the bash completion script")
    c.add_argument("shell", choices=["bash"])
    c.set_defaults(func=cmd_completion)
