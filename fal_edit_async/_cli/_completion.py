"""``fal-edit completion bash|zsh``: a completion script made from the parser itself, so it
never lists a flag the command line does not take."""

from __future__ import annotations

from ._parser import Parser

__all__ = ["script"]


def _flags(parser: Parser) -> list[str]:
    return sorted(s for s in parser.flags() if s.startswith("--"))


def _table(parser: Parser) -> dict[str, list[str]]:
    """Each command (``journal show`` for nested ones) and what may follow it."""
    table = {"": [*parser.commands(), "--help", "--version"]}
    for name, sub in parser.commands().items():
        nested = sub.commands()
        table[name] = [*nested, *_flags(sub)]
        for inner, leaf in nested.items():
            table[f"{name} {inner}"] = _flags(leaf)
    return table


def script(parser: Parser, shell: str) -> str:
    """The completion script for ``shell`` (bash or zsh)."""
    table = _table(parser)
    cases = "\n".join(
        f'        "{key}") words="{" ".join(words)}" ;;' for key, words in table.items()
    )
    bash = f"""# fal-edit completion for bash: source <(fal-edit completion bash)
_fal_edit() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} path="" words="" w
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case $w in -*) ;; *) [[ -z $path ]] && path=$w || {{ [[ $path != *" "* ]] && \\
            case "$path $w" in "journal show") path="$path $w" ;; esac; }} ;; esac
    done
    case $path in
{cases}
    esac
    if [[ $cur == -* || -n $words ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
    [[ ${{#COMPREPLY[@]}} -eq 0 ]] && COMPREPLY=($(compgen -f -- "$cur"))
    return 0
}}
complete -o filenames -F _fal_edit fal-edit
"""
    if shell == "bash":
        return bash
    return (
        "#compdef fal-edit\n# fal-edit completion for zsh (bash's, through bashcompinit)\n"
        "autoload -U +X bashcompinit && bashcompinit\n" + bash
    )
