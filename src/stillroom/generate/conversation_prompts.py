"""The texts the ``conversation`` stage shows its user simulator, and how it shows the talk so far.

UltraChat (Ding et al. 2023) makes multi-turn data with two models: one plays the user (told who
it is and what it wants), the other the assistant. The simulator is an ordinary chat model, so it
is shown the conversation with the roles swapped: its own earlier messages as *assistant* turns,
the assistant's answers as *user* turns, after a system prompt saying whom it plays. A first user
turn (the kick-off) opens its side of the conversation, so that its view, like any chat, starts
with a user turn (templates such as Llama 2's or Gemma's refuse one that starts with an assistant
turn).

Every template has a version (a digest of its text, :class:`PromptTemplate`) recorded in each
simulated turn's lineage, so rows made with an edited prompt say so.
"""

from __future__ import annotations

import hashlib

from stillroom.data.rows import PromptTemplate
from stillroom.llm.types import Message

USER_SYSTEM = PromptTemplate(
    "conversation.user_system",
    "You are role-playing a person who is chatting with an AI assistant.{persona}{goal}\n"
    "Write only this person's next message to the assistant: a follow-up question, a request "
    "for more detail or an example, or a new related question. Write in the first person, "
    "briefly, as a real user would. Never answer your own question, never speak for the "
    "assistant, and never say that you are role-playing.{stop}",
)
PERSONA_LINE = "\nWho you are: {persona}"
GOAL_LINE = "\nWhat you want from this conversation: {goal}"
STOP_LINE = (
    "\nWhen you have what you wanted and have nothing more to ask, write only {marker} instead "
    "of a message."
)

# The simulator's first turn: asked to write the opening itself (a topic) or shown one it wrote
# (the row's question, which stands in the simulator's view as its own first message).
KICKOFF_TOPIC = PromptTemplate(
    "conversation.kickoff_topic",
    "Start a conversation with the assistant about this topic: {topic}\n"
    "Write your first message to the assistant.",
)
KICKOFF = PromptTemplate("conversation.kickoff", "Start the conversation.")

PROMPT_VERSION = PromptTemplate(
    "conversation",
    "\x1f".join(t.text for t in (USER_SYSTEM, KICKOFF_TOPIC, KICKOFF))
    + PERSONA_LINE + GOAL_LINE + STOP_LINE,
).version
"""One version for all the simulator's texts: what each simulated turn records as its template."""


def digest(text: str | None) -> str | None:
    """A short digest of a system prompt as sent (None for none): lineage names the prompt
    without repeating it in every turn of every row."""
    if text is None:
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def user_system(
    persona: str | None, goal: str | None, stop_marker: str | None, custom: str | None = None
) -> str:
    """The simulator's system prompt: ``custom`` (the stage's ``user_system``, which may use
    ``{persona}``, ``{goal}`` and ``{stop_marker}``) or the default, with what the row gives."""
    if custom is not None:
        return custom.format(persona=persona or "", goal=goal or "", stop_marker=stop_marker or "")
    return USER_SYSTEM.format(
        persona=PERSONA_LINE.format(persona=persona) if persona else "",
        goal=GOAL_LINE.format(goal=goal) if goal else "",
        stop=STOP_LINE.format(marker=stop_marker) if stop_marker else "",
    )


def kickoff(topic: str | None) -> str:
    """The simulator's first user turn: asked to open on ``topic``, or (None: the row gave the
    opening question, which the simulator's view shows as its own first message) plainly."""
    return KICKOFF.text if topic is None else KICKOFF_TOPIC.format(topic=topic)


def simulator_view(system: str, first: str, talk: list[Message]) -> list[Message]:
    """What the simulator is sent to write the next user turn: its system prompt, the kick-off
    ``first``, then ``talk`` (the conversation's user and assistant turns, no system turn) with
    the roles swapped. The kick-off stays in front on every turn, so turn k's view extends turn
    k-1's and the chat template renders one growing history."""
    swapped = {"user": "assistant", "assistant": "user"}
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": first},
        *({"role": swapped[m["role"]], "content": m["content"]} for m in talk),
    ]
