from openai_bridge.cli import main

main()
