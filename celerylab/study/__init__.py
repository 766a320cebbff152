"""What a learner studies with: the quiz bank, quiz and interview runners, notebook playground, progress."""
