"""The turns bench/turns.py streams: sentence pairs that pause mid-thought, and how the real
recordings (LibriVox, Sense and Sensibility, chapter 1) join into turns."""

from __future__ import annotations

PAIRS: list[tuple[str, str]] = [
    ("I would like to book a table for", "four people at seven."),
    ("Can you tell me about", "the opening hours on Sunday?"),
    ("So I was thinking that maybe we could", "go to the beach tomorrow."),
    ("My name is", "Daniel and I live in Leeds."),
    ("The weather in Paris is", "usually mild in the spring."),
    ("I need to cancel my appointment on", "Thursday morning."),
    ("Could you remind me to", "call my sister tonight?"),
    ("What I really want to know is", "whether the train is late."),
    ("I have been learning Spanish for", "about three years now."),
    ("The problem with my laptop is that", "it will not turn on."),
    ("Please send the report to", "the whole team by Friday."),
    ("I am looking for a recipe with", "chicken and rice."),
    ("How long does it take to", "drive to the airport?"),
    ("If it rains tomorrow we should", "stay at home and read."),
    ("My favourite film is", "the one about the lighthouse."),
    ("Do you know where I can", "buy fresh bread nearby?"),
    ("I think the best way to", "learn is to practise every day."),
    ("Tell me a story about", "a dragon who is afraid of fire."),
    ("We are planning a trip to", "Scotland in the summer."),
    ("The meeting has been moved to", "half past two."),
    ("Can you explain why", "the sky is blue?"),
    ("I would love to hear", "your opinion on this book."),
    ("Last night I dreamt that", "I could fly over the city."),
    ("Which is better for a beginner,", "the guitar or the piano?"),
    ("I am not sure if I should", "take the job or not."),
    ("Remind me what we talked about", "yesterday afternoon."),
    ("The doctor told me to", "rest for a few days."),
    ("Could we talk about", "my progress in maths?"),
    ("I forgot to buy", "milk and eggs on the way home."),
    ("What time does the", "museum open on Saturdays?"),
    ("My daughter wants to", "become an astronaut."),
    ("I was wondering whether", "you could help me with my homework."),
]
"""(What stops mid-thought, what finishes it): said in one go, and with a pause between."""

HUMAN_TURNS: list[tuple[str, ...]] = [
    # "... how much there might be prudently in his power to do for them." ends a sentence.
    ("0870",),
    ("goforward",),
    # "He was not an ill-disposed young man, | unless to be rather cold hearted ... ill-disposed:"
    ("0880", "0890"),
    # "Had he married a more amiable woman, he might have been made still more respectable
    # than he was; | he might even have been made amiable himself;"
    ("0920", "0930"),
]
"""LibriVox chunks in reading order: the reader paused where one chunk ends and the next begins."""
